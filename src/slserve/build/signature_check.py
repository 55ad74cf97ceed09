"""Before anything is saved, the model runs on inputs made from its signature: a signature the model cannot take
(a starter's `x [-1, 16]` left on a model of 10 features) fails the build, naming both sides, instead of building
and answering every request with a 503.

For ONNX, the graph's own declared inputs are compared first (when no processor stands between the request and
the graph: then the signature describes the graph's feeds): names, ranks and fixed dimensions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slserve.errors import BuildError
from slserve.runtime.tensors import example_inputs
from slserve.spec import FunctionSpec, TensorSpec

if TYPE_CHECKING:
    from slserve.runtime.base import Runtime


def describe(tensors: list[TensorSpec]) -> str:
    return ", ".join(f"{t.name} {t.datatype.value} {list(t.shape)}" for t in tensors)


def check_signature(name: str, spec: FunctionSpec, runtime: Runtime) -> None:
    """Raise BuildError when the model cannot run on inputs its signature admits."""
    says = f"signature says {describe(spec.signature.inputs)}"
    session = getattr(runtime, "session", None)
    if session is not None and spec.processor is None:
        graph = {i.name: i.shape for i in session.get_inputs()}
        declared = ", ".join(f"{n} {shape}" for n, shape in graph.items())
        for t in spec.signature.inputs:
            shape = graph.get(t.name)
            fixed = [d if isinstance(d, int) else -1 for d in shape] if shape is not None else None
            if (
                fixed is None
                or len(fixed) != len(t.shape)
                or any(g != -1 and s != -1 and g != s for g, s in zip(fixed, t.shape, strict=True))
            ):
                raise BuildError(f"{name}: {says}; the ONNX graph declares its inputs as {declared}")
    try:
        runtime.infer(example_inputs(spec.signature))
    except Exception as e:  # whatever the model's code raises on them
        raise BuildError(
            f"{name}: {says}; the model cannot run on inputs made from it{_first_layer(runtime)}: "
            f"{type(e).__name__}: {e}. Make [signature] match the model's inputs"
        ) from None


def _first_layer(runtime: Runtime) -> str:
    """What a torch model's first layer takes, when it says (a Linear's features, a convolution's channels)."""
    module = getattr(runtime, "module", None)
    if module is None:
        return ""
    for layer in module.modules():
        for attribute, what in (("in_features", "features"), ("in_channels", "channels")):
            if isinstance(getattr(layer, attribute, None), int):
                return f" (its first layer, {type(layer).__name__}, takes {getattr(layer, attribute)} {what})"
    return ""
