"""The ONNX Runtime adapter: the session's initializers are the snapshot's mapped tensors (no copy).

The artifact's graphs keep every initializer as external data; `add_external_initializers` hands ORT the
mapped arrays instead. For the CPU provider the artifact also carries a graph ORT already optimized at build
time (`graph.opt-cpu.onnx`, its tensors prefixed `opt-cpu/`), which saves that work at every cold start.
"""

from __future__ import annotations

import functools
import importlib.metadata
import threading
from collections.abc import Callable, Iterable
from typing import Any, Self

import numpy as np

from slserve.errors import RuntimeUnavailable
from slserve.runtime.base import Preloaded, Processor, RuntimeBase, Tensors, make_processor, name_outputs
from slserve.runtime.code import artifact_code
from slserve.runtime.device import choose_device
from slserve.snapshot import Artifact
from slserve.spec import FunctionSpec

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPTIMIZED_CPU_GRAPH = "graph.opt-cpu.onnx"
OPTIMIZED_CPU_PREFIX = "opt-cpu/"
GRAPH = "graph.onnx"


@functools.cache
def check_single_install() -> None:
    """onnxruntime and onnxruntime-gpu share one package folder; with both installed, one silently breaks."""
    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            importlib.metadata.version(dist)
            found.append(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if len(found) > 1:
        raise RuntimeUnavailable(
            "both onnxruntime and onnxruntime-gpu are installed and overwrite each other; "
            "uninstall both, then install exactly one (extra 'onnx' on CPU hosts, 'gpu' on CUDA hosts)"
        )
    if not found:
        raise RuntimeUnavailable("ONNX Runtime is not installed: pip install 'slserve[onnx]' (or [gpu])")


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Pre-packing copies every MatMul weight into a private buffer: N instances would hold N copies of
    # weights that are otherwise shared through the page cache.
    so.add_session_config_entry("session.disable_prepacking", "1")
    return so


class OnnxRuntime(RuntimeBase):
    """ONNX Runtime fixes a session's intra-op threads when it is made, so calls that may use more threads (the
    build proved them exact) run on another session over the same mapped weights: one per thread count."""

    def __init__(
        self,
        spec: FunctionSpec,
        session: Any,
        device: str,
        keepalive: list[Any],
        processor: Processor,
        make_session: Callable[[int], Any] | None = None,
    ) -> None:
        self.spec = spec
        self.session = session
        self.device = device
        self.providers: list[str] = session.get_providers()
        self._keepalive = keepalive  # the mapped arrays ORT reads from must outlive the session
        self._output_names = [o.name for o in session.get_outputs()]
        self.processor = processor
        self._serving = spec.resources.threads
        self._threads = self._serving
        self._sessions = {self._serving: session}  # thread count -> its session
        self._making: set[int] = set()  # sessions being made in the background
        self._make_session = make_session  # None: one session only (a GPU's calls use no intra-op threads)

    def set_threads(self, threads: int) -> None:
        """Calls that follow run with `threads` intra-op threads. A session not made yet is made now (the build's
        proofs), unless `prepare_threads` is making it: until then the serving session answers (its thread count
        is always exact)."""
        if threads == self._threads:
            return
        session = self._sessions.get(threads)
        if session is None and (threads in self._making or self._make_session is None):
            threads, session = self._serving, self._sessions[self._serving]
        elif session is None:
            assert self._make_session is not None
            session = self._sessions[threads] = self._make_session(threads)
        self.session, self._threads = session, threads

    def prepare_threads(self, counts: Iterable[int]) -> None:
        """Make the sessions for `counts` in the background (~70 ms each for MiniLM: no request waits for one).
        Called in an instance, after the fork: a template's thread pools would not survive it."""
        if self._make_session is None:
            return
        make_session = self._make_session
        for threads in set(counts) - self._sessions.keys() - self._making:
            self._making.add(threads)

            def make(threads: int = threads) -> None:
                self._sessions[threads] = make_session(threads)
                self._making.discard(threads)

            threading.Thread(target=make, name=f"onnx-session-{threads}-threads", daemon=True).start()

    @classmethod
    def load(cls, artifact: Artifact, device: str | None = None, preloaded: Preloaded | None = None) -> Self:
        check_single_install()
        import onnxruntime as ort

        spec = artifact.manifest.spec
        chosen = choose_device(spec, device, CUDA in ort.get_available_providers())
        providers = [CUDA, CPU] if chosen == "cuda" else [CPU]
        optimized = chosen == "cpu" and OPTIMIZED_CPU_GRAPH in artifact.manifest.files
        graph, prefix = (OPTIMIZED_CPU_GRAPH, OPTIMIZED_CPU_PREFIX) if optimized else (GRAPH, "")

        # Each graph has its own initializers: map only the chosen graph's.
        names = [n for n in artifact.manifest.tensors if n.startswith(OPTIMIZED_CPU_PREFIX) == optimized]
        arrays = {name.removeprefix(prefix): arr for name, arr in artifact.map_tensors(names).items()}
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays.values()]
        path = str(artifact.file_path(graph))

        def make_session(threads: int) -> Any:
            so = session_options(threads)
            if optimized:
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            so.add_external_initializers(list(arrays), values)
            return ort.InferenceSession(path, so, providers=providers)

        session = make_session(spec.resources.threads)
        got = session.get_providers()
        if chosen == "cuda" and CUDA not in got:
            raise RuntimeUnavailable(f"{spec.model.name}: asked for CUDA but ONNX Runtime gave providers {got}")
        processor = make_processor(
            spec, artifact.asset_paths(), preloaded.processor if preloaded else None, artifact_code(artifact)
        )
        on_cpu = CUDA not in got
        return cls(
            spec, session, "cpu" if on_cpu else "cuda", [arrays, values], processor, make_session if on_cpu else None
        )

    def _run(self, feeds: Tensors) -> Tensors:
        wanted = {i.name for i in self.session.get_inputs()}
        produced: list[np.ndarray] = self.session.run(None, {k: v for k, v in feeds.items() if k in wanted})
        return name_outputs(self.spec, produced, self._output_names)
