"""The Runtime protocol and what every adapter shares: import references, processors, output naming."""

from __future__ import annotations

import importlib
import inspect
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from slserve.errors import InferenceFailed, InvalidInput, SpecError
from slserve.runtime.code import FunctionCode, artifact_code
from slserve.runtime.tensors import check_inputs
from slserve.snapshot import Artifact
from slserve.spec import FunctionSpec

Tensors = dict[str, np.ndarray]


@dataclass
class RequestContext:
    """What a processor may read of one request beyond its tensors, and report back about it."""

    options: Mapping[str, Any] = field(default_factory=dict)  # request parameters, e.g. {"truncate": True}
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. {"truncated": 2}: rows cut to the model's limit


@runtime_checkable
class Runtime(Protocol):
    """A loaded function: infer on a batch of already-validated inputs."""

    spec: FunctionSpec
    device: str

    def infer(self, inputs: Mapping[str, np.ndarray], context: RequestContext | None = None) -> Tensors:
        """Run the model on `inputs` (first dim = batch) and return the signature's outputs."""
        ...

    def prepare(self, inputs: Mapping[str, np.ndarray], context: RequestContext | None = None) -> Tensors:
        """One request's inputs, checked and preprocessed into graph feeds (raises InvalidInput)."""
        ...

    def run(self, feeds: Tensors) -> Tensors:
        """One model call on feeds batched along the first dimension."""
        ...

    def finish(self, produced: Mapping[str, np.ndarray]) -> Tensors:
        """One request's graph outputs, postprocessed into the signature's outputs."""
        ...

    def tokens(self, feeds: Mapping[str, np.ndarray]) -> int | None:
        """Billable tokens in one request's feeds, when the processor counts them (text models); else None."""
        ...

    def feed_examples(self) -> list[Tensors]:
        """One-row feeds, one per feed shape the processor produces, when it can list them; else []."""
        ...

    def after_fork(self) -> None:
        """Called in a forked instance that inherited this runtime from its template (e.g. set thread counts)."""
        ...


class Processor(Protocol):
    """Maps the signature's tensors to the graph's inputs, and the graph's outputs back (e.g. a tokenizer).

    `preprocess` may take the request's context as a second argument (options in, notes out); one that takes
    the inputs only is adapted once, when it is made."""

    def preprocess(self, inputs: Mapping[str, np.ndarray], context: RequestContext) -> Tensors: ...

    def postprocess(self, outputs: Mapping[str, np.ndarray]) -> Tensors: ...

    # Optional: `count_tokens(feeds) -> int`, the real tokens in one request's feeds (usage of text models).
    # Optional: `feed_examples() -> list[Tensors]`, one-row feeds of every shape it produces (exact batching is
    # proven for those shapes at build; requests of any other shape run unbatched).


class IdentityProcessor:
    def preprocess(self, inputs: Mapping[str, np.ndarray], context: RequestContext) -> Tensors:
        return dict(inputs)

    def postprocess(self, outputs: Mapping[str, np.ndarray]) -> Tensors:
        return dict(outputs)


class _WithoutContext:
    """A processor whose `preprocess` takes the inputs only: the context is not handed on."""

    def __init__(self, processor: Any) -> None:
        self.inner = processor

    def preprocess(self, inputs: Mapping[str, np.ndarray], context: RequestContext) -> Tensors:
        result: Tensors = self.inner.preprocess(inputs)
        return result

    def postprocess(self, outputs: Mapping[str, np.ndarray]) -> Tensors:
        result: Tensors = self.inner.postprocess(outputs)
        return result

    def __getattr__(self, name: str) -> Any:  # the optional parts: count_tokens, feed_examples
        return getattr(self.inner, name)


def _takes_context(processor: Any) -> bool:
    try:
        return len(inspect.signature(processor.preprocess).parameters) >= 2
    except (TypeError, ValueError):  # a builtin without a signature: assume the plain form
        return False


def import_ref(ref: str, code: FunctionCode | None = None) -> Callable[..., Any]:
    """Resolve 'package.module:attribute', from the function's own code (`code`) where it has the module."""
    module_name, _, attr = ref.partition(":")
    try:
        module = code.import_module(module_name) if code is not None else importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        where = f"; nor does its function folder have {module_name.split('.')[0]}.py" if code is not None else ""
        raise SpecError(f"cannot import {module_name!r} (from {ref!r}): {e}{where}") from None
    except Exception as e:  # the module itself failed: say how and where, to whoever reads the error
        frame = traceback.extract_tb(e.__traceback__)[-1]
        where = f" ({frame.filename}, line {frame.lineno})"
        raise SpecError(f"importing {module_name!r} (from {ref!r}) failed: {type(e).__name__}: {e}{where}") from e
    try:
        obj: Callable[..., Any] = getattr(module, attr)
    except AttributeError:
        raise SpecError(f"{module_name!r} has no attribute {attr!r} (from {ref!r})") from None
    return obj


def make_processor(
    spec: FunctionSpec, assets: Mapping[str, Path], preloaded: Processor | None = None, code: FunctionCode | None = None
) -> Processor:
    if preloaded is not None:
        return preloaded
    if spec.processor is None:
        return IdentityProcessor()
    made = import_ref(spec.processor.factory, code)(dict(assets))
    processor: Processor = made if _takes_context(made) else _WithoutContext(made)
    return processor


def name_outputs(spec: FunctionSpec, produced: object, graph_names: Sequence[str] = ()) -> Tensors:
    """Name a graph's outputs: a dict keeps its names; a tensor or tuple takes the graph's output names, or
    the signature's outputs in order."""
    if isinstance(produced, Mapping):
        return {str(k): v for k, v in produced.items()}
    values: list[np.ndarray] = list(produced) if isinstance(produced, list | tuple) else [produced]  # type: ignore[list-item]
    names = list(graph_names) or [t.name for t in spec.signature.outputs]
    if len(values) != len(names):
        raise InferenceFailed(f"the model returned {len(values)} output(s), the signature names {len(names)}")
    return dict(zip(names, values, strict=True))


class RuntimeBase:
    """Validation, processing and output checks around an adapter's `_run`."""

    spec: FunctionSpec
    device: str
    processor: Processor

    def infer(self, inputs: Mapping[str, np.ndarray], context: RequestContext | None = None) -> Tensors:
        return self.finish(self.run(self.prepare(inputs, context)))

    def prepare(self, inputs: Mapping[str, np.ndarray], context: RequestContext | None = None) -> Tensors:
        """Check one request's inputs against the signature and turn them into the graph's feeds."""
        return self.processor.preprocess(check_inputs(self.spec.signature, inputs), context or RequestContext())

    def run(self, feeds: Tensors) -> Tensors:
        """The model call on feeds whose first dimension is the batch (one request's or several merged)."""
        try:
            return self._run(feeds)
        except InvalidInput:
            raise
        except Exception as e:  # the model's own failure: report it, keep serving
            raise InferenceFailed(f"{self.spec.model.name}: the model raised {type(e).__name__}: {e}") from e

    def finish(self, produced: Mapping[str, np.ndarray]) -> Tensors:
        """Graph outputs -> the signature's outputs, for one request."""
        outputs = self.processor.postprocess(produced)
        wanted = [t.name for t in self.spec.signature.outputs]
        missing = [n for n in wanted if n not in outputs]
        if missing:
            raise InferenceFailed(f"{self.spec.model.name}: the model did not produce output(s) {missing}")
        return {n: outputs[n] for n in wanted}

    def tokens(self, feeds: Mapping[str, np.ndarray]) -> int | None:
        count = getattr(self.processor, "count_tokens", None)  # optional: only text processors have one
        return None if count is None else int(count(feeds))

    def feed_examples(self) -> list[Tensors]:
        examples = getattr(self.processor, "feed_examples", None)  # optional, as count_tokens
        return [] if examples is None else list(examples())

    def after_fork(self) -> None:
        pass

    def _run(self, feeds: Tensors) -> Tensors:
        raise NotImplementedError


@dataclass
class Preloaded:
    """What a template process prepares before forking, so each instance skips it.

    A CPU function is loaded whole (module or session over the mapped weights, processor): loading runs no
    kernel and starts no thread, so the forked instance only warms up. A GPU function, or an ONNX session that
    would start an intra-op thread pool, gets its processor (and torch skeleton on the meta device) only.
    """

    runtime: Runtime | None = None
    processor: Processor | None = None
    module: Any = None


def preload_runtime(artifact: Artifact) -> Preloaded:
    spec = artifact.manifest.spec
    on_cpu = spec.resources.gpu is None
    if spec.framework.value == "torch":
        from slserve.runtime.torch_runtime import TorchRuntime, build_skeleton

        if on_cpu:
            return Preloaded(runtime=TorchRuntime.load(artifact, device="cpu"))
        code = artifact_code(artifact)
        processor = make_processor(spec, artifact.asset_paths(), code=code)
        return Preloaded(processor=processor, module=build_skeleton(spec, code))
    if on_cpu and spec.resources.threads == 1:
        from slserve.runtime.onnx_runtime import OnnxRuntime

        return Preloaded(runtime=OnnxRuntime.load(artifact, device="cpu"))
    return Preloaded(processor=make_processor(spec, artifact.asset_paths(), code=artifact_code(artifact)))


def load_runtime(artifact: Artifact, device: str | None = None, preloaded: Preloaded | None = None) -> Runtime:
    """Load the artifact with the adapter for its framework. Imports the framework only when needed."""
    framework = artifact.manifest.spec.framework.value
    if preloaded is not None and preloaded.runtime is not None and device in (None, preloaded.runtime.device):
        preloaded.runtime.after_fork()
        return preloaded.runtime
    if framework == "torch":
        from slserve.runtime.torch_runtime import TorchRuntime

        return TorchRuntime.load(artifact, device=device, preloaded=preloaded)
    from slserve.runtime.onnx_runtime import OnnxRuntime

    return OnnxRuntime.load(artifact, device=device, preloaded=preloaded)
