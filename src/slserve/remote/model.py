"""One model function in a remote container (a Lambda execution environment, a Modal container): loaded once,
before any request (Lambda's init phase, a snapshot's enter hook), with the same runtime adapters as the local
platform, answering the Open Inference Protocol v2 with the same checks.

The platform's own limits are refused before the model runs, each as a clear error: a request or an answer over
its payload limit (Lambda's 6 MB for synchronous calls: 413), a call with too little time left to run (504).
"""

from __future__ import annotations

import base64
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slserve.errors import GatewayTimeout, PayloadTooLarge, SlserveError
from slserve.gateway.v2 import HEADER_LENGTH, RequestLimits, encode_infer, parse_infer
from slserve.platform.base import Deployed, InferResult
from slserve.runtime.base import RequestContext, Runtime, load_runtime
from slserve.runtime.tensors import example_inputs
from slserve.snapshot import ArtifactStore

MAX_ELEMENTS = 16 * 1024 * 1024
SAFETY_MS = 50  # a call is not started with less time than this left in the invocation

Reply = tuple[int, bytes, dict[str, str]]


@dataclass
class ModelFunction:
    function: Deployed
    runtime: Runtime
    init_ms: float
    payload_limit: int | None = None  # the platform's limit on a request or an answer, in bytes
    instance: str = "remote"  # this container's name, for the answer's x-slserve-instance
    cold: bool = True  # the next invocation is this environment's first (after init, or after a restore)
    served: int = field(default=0)

    @classmethod
    def load(
        cls, artifacts: Path, name: str, digest: str | None = None, payload_limit: int | None = None
    ) -> ModelFunction:
        """Map the artifact and warm the model up through the same path requests take."""
        started = time.perf_counter()
        store = ArtifactStore(artifacts)
        artifact = store.open(digest) if digest else store.current(name)
        runtime = load_runtime(artifact)
        runtime.infer(example_inputs(runtime.spec.signature))
        function = Deployed(name, artifact.manifest.spec, artifact.digest)
        instance = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME") or os.environ.get("MODAL_TASK_ID") or "remote"
        return cls(function, runtime, (time.perf_counter() - started) * 1000, payload_limit, instance)

    @classmethod
    def from_environment(cls, payload_limit: int | None = None) -> ModelFunction:
        """`SLSERVE_ARTIFACTS` (the store in the package, or on a volume), `SLSERVE_FUNCTION`, `SLSERVE_DIGEST`."""
        root = Path(os.environ.get("SLSERVE_ARTIFACTS", Path(os.environ.get("LAMBDA_TASK_ROOT", ".")) / "artifacts"))
        name, digest = os.environ["SLSERVE_FUNCTION"], os.environ.get("SLSERVE_DIGEST") or None
        return cls.load(root, name, digest, payload_limit)

    def after_restore(self) -> None:
        """A snapshot's restore: every container restored from one snapshot must not share random state."""
        seed = int.from_bytes(os.urandom(8), "little")
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch = _loaded("torch")
        if torch is not None:
            torch.manual_seed(seed)
        self.cold = True

    def answer(self, body: bytes, headers: dict[str, str], remaining_ms: int | None) -> Reply:
        """One v2 request: (status, body, headers), errors included."""
        try:
            return self._answer(body, headers, remaining_ms)
        except SlserveError as e:
            return e.status, _error_body(e), {"content-type": "application/json"}

    def _answer(self, body: bytes, headers: dict[str, str], remaining_ms: int | None) -> Reply:
        if self.payload_limit is not None and len(body) > self.payload_limit:
            raise PayloadTooLarge(
                f"the request is {len(body)} bytes, over the platform's {self.payload_limit}-byte limit for "
                "synchronous calls; send fewer rows per request"
            )
        if remaining_ms is not None and remaining_ms < SAFETY_MS:
            raise GatewayTimeout(f"{self.function.name}: only {remaining_ms} ms left before its deadline; retry")
        limits = RequestLimits(MAX_ELEMENTS, self.function.spec.limits.max_rows)
        v2 = parse_infer(self.function, body, headers.get(HEADER_LENGTH), limits)
        started = time.perf_counter()
        outputs = self.runtime.infer(v2.request.inputs, RequestContext(options=v2.request.options))
        compute_ms = (time.perf_counter() - started) * 1000
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
            batch_size=1,
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
                "x-slserve-compute-ms": f"{compute_ms:.2f}",
                "x-slserve-batch-size": "1",
            }
        )
        if cold:
            out["x-slserve-cold-start-ms"] = f"{self.init_ms:.1f}"
        return 200, content, out


def _error_body(error: SlserveError) -> bytes:
    import orjson

    return orjson.dumps(error.to_dict())


def _loaded(module: str) -> Any:
    import sys

    return sys.modules.get(module)


def decode_body(event: dict[str, Any]) -> bytes:
    """An event's body as bytes (API Gateway base64-encodes binary bodies)."""
    body = event.get("body") or ""
    return base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
