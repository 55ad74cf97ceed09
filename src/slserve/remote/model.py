"""One model function in a remote container (a Lambda execution environment, a Modal container): loaded once,
before any request (Lambda's init phase, a snapshot's enter hook), with the same runtime adapters as the local
platform, answering the Open Inference Protocol v2 with the same checks.

The platform's own limits are refused before the model runs, each as a clear error: a request or an answer over
its payload limit (Lambda's 6 MB for synchronous calls: 413), a call with too little time left to run (504).
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from slserve.errors import GatewayTimeout, InferenceFailed, PayloadTooLarge, SlserveError
from slserve.platform.base import Deployed, InferResult
from slserve.platform.v2 import HEADER_LENGTH, RequestLimits, V2Request, encode_infer, parse_infer
from slserve.restore import reseed
from slserve.runtime.base import Preloaded, RequestContext, Runtime, Tensors, load_runtime
from slserve.runtime.batching import ExactBatcher, run_call
from slserve.runtime.tensors import example_inputs
from slserve.snapshot import Artifact, ArtifactStore

MAX_ELEMENTS = 16 * 1024 * 1024
SAFETY_MS = 50  # a call is not started with less time than this left in the invocation

Reply = tuple[int, bytes, dict[str, str]]


@dataclass
class ModelFunction:
    function: Deployed
    runtime: Runtime
    init_ms: float
    batcher: ExactBatcher  # the build's batching floors for this runtime's device (local and remote answer alike)
    payload_limit: int | None = None  # the platform's limit on a request or an answer, in bytes
    instance: str = "remote"  # this container's name, for the answer's x-slserve-instance
    cold: bool = True  # the next invocation is this environment's first (after init, or after a restore)
    served: int = field(default=0)

    @classmethod
    def load(
        cls, artifacts: Path, name: str, digest: str | None = None, payload_limit: int | None = None
    ) -> ModelFunction:
        store = ArtifactStore(artifacts)
        return cls.from_artifact(store.open(digest) if digest else store.current(name), payload_limit=payload_limit)

    @classmethod
    def from_artifact(
        cls,
        artifact: Artifact,
        device: str | None = None,
        preloaded: Preloaded | None = None,
        payload_limit: int | None = None,
    ) -> ModelFunction:
        """Map the artifact, load the model (on `device`, else as the spec and the host say; from what a snapshot
        preloaded, if anything) and warm it up through the same path requests take."""
        started = time.perf_counter()
        runtime = load_runtime(artifact, device, preloaded)
        runtime.infer(example_inputs(runtime.spec.signature))
        spec = artifact.manifest.spec
        function = Deployed(artifact.manifest.function, spec, artifact.digest)
        instance = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME") or os.environ.get("MODAL_TASK_ID") or "remote"
        floors = artifact.manifest.build.batch_floors.get(runtime.device, {})  # none proven: never merged
        batcher = ExactBatcher(spec.batching.max_batch_size, floors)
        init_ms = (time.perf_counter() - started) * 1000
        return cls(function, runtime, init_ms, batcher, payload_limit, instance)

    @classmethod
    def from_environment(cls, payload_limit: int | None = None) -> ModelFunction:
        """`SLSERVE_ARTIFACTS` (the store in the package, or on a volume), `SLSERVE_FUNCTION`, `SLSERVE_DIGEST`."""
        root = Path(os.environ.get("SLSERVE_ARTIFACTS", Path(os.environ.get("LAMBDA_TASK_ROOT", ".")) / "artifacts"))
        name, digest = os.environ["SLSERVE_FUNCTION"], os.environ.get("SLSERVE_DIGEST") or None
        return cls.load(root, name, digest, payload_limit)

    def after_restore(self) -> None:
        """A snapshot's restore: every container restored from one snapshot must not share random state."""
        reseed()
        self.cold = True

    def answer(self, body: bytes, headers: dict[str, str], remaining_ms: int | None) -> Reply:
        """One v2 request, run alone: (status, body, headers), errors included."""
        try:
            v2 = self.parse(body, headers, remaining_ms)
            context = RequestContext(options=v2.request.options)
            started = time.perf_counter()
            try:
                feeds = self.runtime.prepare(v2.request.inputs, context)
            except SlserveError:
                raise
            except Exception as e:  # the processor's own: this request fails, the container serves on
                raise failure(self.function.name, e) from None
            prepare_ms = (time.perf_counter() - started) * 1000
            outcome = run_call(self.runtime, [feeds], self.size_alone(feeds), self.size_alone)[0]
            if outcome.outputs is None:
                assert outcome.error is not None
                raise failure(self.function.name, outcome.error)
            compute_ms = prepare_ms + outcome.compute_ms
            return self.reply(v2, outcome.outputs, compute_ms, 1, self.runtime.tokens(feeds), context.notes)
        except SlserveError as e:
            return error_reply(e)

    def size_alone(self, feeds: Tensors) -> int:
        """The rows of a call that runs these feeds alone: padded to their shape's floor, as locally."""
        return self.batcher.plan([feeds])[0].size

    def parse(self, body: bytes, headers: dict[str, str], remaining_ms: int | None) -> V2Request:
        """A request checked as the gateway checks it (signature, declared sizes, rows) and against the
        platform's limits, before anything runs."""
        if self.payload_limit is not None and len(body) > self.payload_limit:
            raise PayloadTooLarge(
                f"the request is {len(body)} bytes, over the platform's {self.payload_limit}-byte limit for "
                "synchronous calls; send fewer rows per request"
            )
        if remaining_ms is not None and remaining_ms < SAFETY_MS:
            raise GatewayTimeout(f"{self.function.name}: only {remaining_ms} ms left before its deadline; retry")
        spec_limits = self.function.spec.limits
        limits = RequestLimits(MAX_ELEMENTS, spec_limits.max_rows, spec_limits.max_bytes_per_element)
        return parse_infer(self.function, body, headers.get(HEADER_LENGTH), limits)

    def reply(
        self,
        v2: V2Request,
        outputs: Tensors,
        compute_ms: float,
        batch_size: int,
        tokens: int | None = None,
        notes: dict[str, Any] | None = None,
    ) -> Reply:
        """The answer, with the headers the gateway turns into its own answer's and the ledger's fields."""
        if v2.request.outputs is not None:
            outputs = {k: v for k, v in outputs.items() if k in v2.request.outputs}
        cold, self.cold = self.cold, False
        self.served += 1
        result = InferResult(
            outputs=outputs,
            function=self.function.name,
            version=self.function.spec.model.version,
            instance=self.instance,
            queue_ms=0.0,
            compute_ms=compute_ms,
            batch_size=batch_size,
            cold_start_ms=self.init_ms if cold else None,
        )
        content, out = encode_infer(result, self.function.spec.model.name, v2)
        if self.payload_limit is not None and len(content) > self.payload_limit:
            raise PayloadTooLarge(
                f"the answer would be {len(content)} bytes, over the platform's {self.payload_limit}-byte limit; "
                "ask for fewer rows or outputs"
            )
        out.update(
            {
                "x-slserve-function": self.function.name,
                "x-slserve-version": result.version,
                "x-slserve-instance": self.instance,
                "x-slserve-compute-ms": f"{compute_ms:.2f}",
                "x-slserve-batch-size": str(batch_size),
                "x-slserve-device": self.runtime.device,
            }
        )
        if cold:
            out["x-slserve-cold-start-ms"] = f"{self.init_ms:.1f}"
        if tokens is not None:
            out["x-slserve-tokens"] = str(tokens)
        if notes:
            out["x-slserve-notes"] = orjson.dumps(notes).decode()  # what the processor reported (rows truncated)
        return 200, content, out


def failure(function: str, error: Exception) -> SlserveError:
    """An exception from model or processor code, as the error that fails its request (500, its type named)."""
    if isinstance(error, SlserveError):
        return error
    return InferenceFailed(f"{function}: {type(error).__name__}: {error}")


def error_reply(error: SlserveError) -> Reply:
    return error.status, _error_body(error), {"content-type": "application/json"}


def _error_body(error: SlserveError) -> bytes:
    return orjson.dumps(error.to_dict())


def decode_body(event: dict[str, Any]) -> bytes:
    """An event's body as bytes (API Gateway base64-encodes binary bodies)."""
    body = event.get("body") or ""
    return base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
