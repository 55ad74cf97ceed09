"""The `aws` executor: functions whose target is `aws` run as Lambda functions, each call a synchronous
`invoke` of the function's alias, with the request as v2 binary data (exact, no JSON numbers) in the payload
that `slserve.aws.handler` takes.

Lambda's refusals become the gateway's usual errors, so a tier's fallback policy applies to them as to local
instances: throttling is a 429 `Overloaded` (with Retry-After), a missing function or a failed init is a 503
`RuntimeUnavailable`, a crashed or timed-out invocation a 502 `InstanceFailed`.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from slserve.errors import InstanceFailed, Overloaded, PayloadTooLarge, RuntimeUnavailable
from slserve.platform.base import Deployed, InferRequest
from slserve.platform.remote_executor import RemoteExecutor, Reply

ALIAS = "live"  # the alias every deployed function is invoked through (it moves on each deploy)
PAYLOAD_LIMIT = 6 * 1024 * 1024  # Lambda's synchronous invocations, request and response alike


def lambda_name(prefix: str, function: str) -> str:
    return f"{prefix}-{function}"


def lambda_client(region: str | None, endpoint_url: str | None, concurrency: int, timeout_s: float) -> Any:
    """A boto3 Lambda client for synchronous invokes: no retries (a throttle is the gateway's 429 and a tier's
    fallback; a timed-out invoke retried would run the model twice), a read timeout past the request's own, and a
    connection per concurrent call."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": 1},
        read_timeout=timeout_s + 5,
        connect_timeout=5,
        max_pool_connections=concurrency,
    )
    return boto3.client("lambda", region_name=region, endpoint_url=endpoint_url, config=config)


class LambdaExecutor(RemoteExecutor):
    target = "aws"

    def __init__(
        self,
        client: Any,
        prefix: str = "slserve",
        naming: Callable[[str, str], str] = lambda_name,
        concurrency: int = 64,
    ) -> None:
        """`client`: a boto3 Lambda client (its own endpoint, region and credentials); `concurrency`: invokes in
        flight at once from this gateway (each holds a thread while Lambda computes; asyncio's default pool would
        cap them at the core count + 4)."""
        super().__init__()
        self.client = client
        self.prefix = prefix
        self.naming = naming
        self.calls = ThreadPoolExecutor(concurrency, thread_name_prefix="lambda-invoke")

    async def stop(self, drain_seconds: float) -> None:
        self.calls.shutdown(wait=False, cancel_futures=True)

    def gives_gpu(self, function: str) -> bool | None:
        return False  # Lambda has no GPUs: a function naming one runs on Lambda's CPUs

    async def _call(self, function: Deployed, body: bytes, headers: dict[str, str], request: InferRequest) -> Reply:
        payload = orjson.dumps({"slserve": 1, "body": base64.b64encode(body).decode(), "headers": headers})
        if len(payload) > PAYLOAD_LIMIT:  # refused here, not by Lambda as a 503 after the upload
            raise PayloadTooLarge(
                f"the call to {function.name} would be {len(payload)} bytes (base64 makes binary tensors 4/3 "
                f"larger), over Lambda's {PAYLOAD_LIMIT}-byte limit for synchronous calls; send fewer rows"
            )
        name = self.naming(self.prefix, function.name)
        reply = await asyncio.get_running_loop().run_in_executor(self.calls, self._invoke, name, payload)
        out = {k.lower(): str(v) for k, v in (reply.get("headers") or {}).items()}
        return Reply(int(reply["statusCode"]), base64.b64decode(reply.get("body") or ""), out)

    def _invoke(self, name: str, payload: bytes) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ReadTimeoutError  # here: model functions import this module

        errors = self.client.exceptions
        try:
            response = self.client.invoke(FunctionName=name, Qualifier=ALIAS, Payload=payload)
        except errors.TooManyRequestsException:
            raise Overloaded(f"{name}: Lambda is throttling this function; retry later", retry_after=1.0) from None
        except errors.RequestTooLargeException:
            raise PayloadTooLarge(f"{name}: over Lambda's {PAYLOAD_LIMIT}-byte limit; send fewer rows") from None
        except errors.ResourceNotFoundException:
            raise RuntimeUnavailable(
                f"{name}:{ALIAS} does not exist on Lambda; deploy it (`slserve deploy aws`)"
            ) from None
        except errors.ClientError as e:
            raise RuntimeUnavailable(f"{name}: Lambda refused the call ({e})") from None
        except ReadTimeoutError:  # not retried: the function may have run
            raise InstanceFailed(
                f"{name}: no answer from Lambda within the client's read timeout", may_have_run=True
            ) from None
        except BotoCoreError as e:  # the endpoint unreachable, credentials missing
            raise RuntimeUnavailable(f"{name}: Lambda could not be called ({e})") from None
        body = response["Payload"].read()
        if response.get("FunctionError"):
            detail = orjson.loads(body) if body else {}
            message = detail.get("errorMessage", "no message") if isinstance(detail, dict) else str(detail)
            raise InstanceFailed(f"{name}: the invocation failed ({response['FunctionError']}: {message})")
        reply: dict[str, Any] = orjson.loads(body)
        return reply
