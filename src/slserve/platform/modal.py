"""The `modal` executor: functions whose target is `modal` run as Modal classes (`slserve deploy modal`), each
with a web endpoint that answers the v2 protocol (`slserve.remote.endpoint`); the gateway calls it over HTTPS.

One connection pool for all of them (kept alive: a new TLS handshake per call would cost more than a small
model's compute), the shared secret as a Bearer token, the request's own time left as both the client's
timeout and `x-slserve-timeout-ms` (so the endpoint starts no work nobody waits for). Failures become the
gateway's errors, so a tier's fallback policy applies (premium on Modal down -> standard here, where allowed):
unreachable, a refused secret, Modal's 502/503/504 -> 503 `RuntimeUnavailable`; Modal's or the endpoint's 429
-> 429 `Overloaded`; no answer in time -> 502 `InstanceFailed` (or 504 when the request's own deadline passed).
"""

from __future__ import annotations

import time

import httpx

from slserve.errors import GatewayTimeout, InstanceFailed, RuntimeUnavailable
from slserve.platform.base import Deployed, InferRequest
from slserve.platform.modal_labels import modal_label
from slserve.platform.remote_executor import RemoteExecutor, Reply
from slserve.platform.v2 import CLIENT_TIMEOUT
from slserve.secrets import RotatingSecret


class ModalExecutor(RemoteExecutor):
    target = "modal"

    def __init__(
        self,
        url: str,
        secret: str | RotatingSecret,
        timeout_s: float,
        prefix: str = "slserve",
        concurrency: int = 256,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`url`: the endpoints' address, with `{label}` (or `{function}`) where each function's goes, e.g.
        `https://acme--{label}.modal.run`; `secret`: what the endpoints expect as the Bearer token (read again
        when they refuse it: it may have rotated)."""
        super().__init__()
        self.url = url
        self.secret = RotatingSecret.fixed(secret) if isinstance(secret, str) else secret
        self.timeout_s = timeout_s
        self.prefix = prefix
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        # Modal answers a call that runs past 150 s with a 303 to poll for its result: following it is the protocol.
        self.client = httpx.AsyncClient(limits=limits, follow_redirects=True, transport=transport)

    def endpoint(self, function: str) -> str:
        return self.url.format(label=modal_label(self.prefix, function), function=function).rstrip("/")

    async def stop(self, drain_seconds: float) -> None:
        await self.client.aclose()

    def gives_gpu(self, function: str) -> bool | None:
        deployed = self.functions.get(function)
        return None if deployed is None else bool(deployed.spec.resources.gpu)  # Modal gives the GPU a class asks

    async def _call(self, function: Deployed, body: bytes, headers: dict[str, str], request: InferRequest) -> Reply:
        left_s = self.timeout_s
        if request.deadline is not None:
            left_s = min(left_s, request.deadline - time.monotonic())
        if left_s <= 0:
            raise GatewayTimeout(f"{function.name}: the request's deadline passed before the call")
        base = self.endpoint(function.name)
        url = f"{base}/v2/models/{function.spec.model.name}/infer"
        secret = await self.secret.get()
        r = await self._post(function, url, body, headers, secret, left_s, request)
        if r.status_code == 401 and (rotated := await self.secret.refused(secret)) is not None:
            r = await self._post(function, url, body, headers, rotated, left_s, request)  # the secret had rotated
        if r.status_code == 401:
            raise RuntimeUnavailable(
                f"{function.name}: its Modal endpoint refused this gateway's secret: SLSERVE_MODAL_SECRET must be "
                "the endpoint's SLSERVE_ENDPOINT_SECRET (the Modal secret `slserve deploy modal` created)"
            )
        return Reply(r.status_code, r.content, {k.lower(): v for k, v in r.headers.items()})

    async def _post(
        self,
        function: Deployed,
        url: str,
        body: bytes,
        headers: dict[str, str],
        secret: str,
        left_s: float,
        request: InferRequest,
    ) -> httpx.Response:
        base = self.endpoint(function.name)
        sent = {**headers, "authorization": f"Bearer {secret}", CLIENT_TIMEOUT: str(max(1, int(left_s * 1000)))}
        try:
            return await self.client.post(url, content=body, headers=sent, timeout=httpx.Timeout(left_s, connect=10.0))
        except httpx.TimeoutException as e:
            if isinstance(e, httpx.ConnectTimeout):
                raise RuntimeUnavailable(f"{function.name}: cannot reach its Modal endpoint {base}: timed out") from e
            if request.deadline is not None and time.monotonic() >= request.deadline:
                raise GatewayTimeout(f"{function.name}: no answer from Modal before the request's deadline") from None
            raise InstanceFailed(
                f"{function.name}: no answer from Modal within {self.timeout_s:g} s", may_have_run=True
            ) from None
        except httpx.HTTPError as e:
            raise RuntimeUnavailable(f"{function.name}: cannot reach its Modal endpoint {base} ({e!r})") from None
