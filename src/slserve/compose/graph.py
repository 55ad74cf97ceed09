"""A pipeline checked as a graph: every source exists, no cycles, no step left unused, and every edge joins
tensors that fit (datatype, rank, fixed dimensions), from its inputs through its steps to its outputs.

Checked at build against the signatures of the functions its model steps may reach (a step naming an alias, or
no version, may reach any version of its model: each must fit), and again at run time for what a step reached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from slserve.compose import ops
from slserve.compose.spec import PipelineSpec, Step
from slserve.errors import SpecError
from slserve.spec import Signature, TensorSpec

# (model, version or alias or None) -> [(what it is, e.g. "minilm version 1", its signature)] it may reach
Signatures = Callable[[str, str | None], list[tuple[str, Signature]]]


def fits(have: TensorSpec, want: TensorSpec) -> bool:
    if have.datatype != want.datatype or len(have.shape) != len(want.shape):
        return False
    return all(a == b or a == -1 or b == -1 for a, b in zip(have.shape, want.shape, strict=True))


def _show(source: str, spec: TensorSpec) -> str:
    return f"{source} ({spec.datatype.value} {spec.shape})"


@dataclass(frozen=True)
class Graph:
    spec: PipelineSpec
    order: tuple[Step, ...]  # every step after the steps it reads
    needs: dict[str, frozenset[str]]  # step -> the steps it reads
    tensors: dict[str, TensorSpec]  # source ("input" or "step.output") -> what it carries

    @classmethod
    def check(cls, spec: PipelineSpec, signatures: Signatures) -> Graph:
        tensors: dict[str, TensorSpec] = {t.name: t for t in spec.signature.inputs}
        steps = {s.name: s for s in spec.steps}
        needs = {s.name: frozenset(src.split(".")[0] for src in s.sources if "." in src) for s in spec.steps}
        for step in spec.steps:
            for src in step.sources:
                head = src.split(".")[0]
                if ("." in src and head not in steps) or ("." not in src and src not in tensors):
                    raise SpecError(
                        f"{step.describe()} reads {src!r}, which is neither a pipeline input "
                        f"({sorted(t.name for t in spec.signature.inputs)}) nor a step's output (<step>.<output>, "
                        f"steps: {sorted(steps)})"
                    )
        order: list[Step] = []
        done: set[str] = set()
        while len(order) < len(steps):
            ready = [s for s in spec.steps if s.name not in done and needs[s.name] <= done]
            if not ready:
                stuck = sorted(set(steps) - done)
                raise SpecError(f"steps {stuck} read each other in a cycle; a pipeline is a graph without cycles")
            for step in ready:
                tensors.update({f"{step.name}.{k}": v for k, v in _outputs(step, tensors, signatures).items()})
                order.append(step)
                done.add(step.name)
        for name, src in spec.outputs.items():
            want = next(t for t in spec.signature.outputs if t.name == name)
            have = tensors.get(src)
            if have is None:
                raise SpecError(
                    f"output {name!r} is wired to {src!r}, which no step returns; "
                    f"steps return {sorted(k for k in tensors if '.' in k)}"
                )
            if not fits(have, want):
                raise SpecError(
                    f"output {name!r} is declared {want.datatype.value} {want.shape} but is wired to {_show(src, have)}"
                )
        read = {src.split(".")[0] for s in spec.steps for src in s.sources} | {
            v.split(".")[0] for v in spec.outputs.values()
        }
        unused = sorted(set(steps) - read)
        if unused:
            raise SpecError(
                f"steps {unused} feed no other step and no output: remove them (each would run, and be "
                "billed, for nothing)"
            )
        return cls(spec, tuple(order), needs, tensors)


def _outputs(step: Step, tensors: dict[str, TensorSpec], signatures: Signatures) -> dict[str, TensorSpec]:
    if step.op is not None:
        assert isinstance(step.inputs, list)
        specs = [t.model_copy(update={"name": src}) for src in step.inputs for t in [tensors[src]]]
        return ops.infer(step, specs)
    if step.lookup is not None:
        assert step.key is not None
        return {"features": ops.lookup_spec(step, tensors[step.key].model_copy(update={"name": step.key}))}
    assert step.model is not None and isinstance(step.inputs, dict)
    reached = signatures(step.model, step.version)
    first_label, first = reached[0]
    for label, signature in reached:
        check_step_inputs(step, label, signature, tensors)
        if signature.outputs != first.outputs:
            raise SpecError(
                f"{step.describe()} may reach {first_label} and {label}, which return different outputs; pin "
                "one version (version = ...) or give them one signature"
            )
    return {t.name: t for t in first.outputs}


def check_step_inputs(step: Step, label: str, signature: Signature, tensors: dict[str, TensorSpec]) -> None:
    """The step's wiring against one signature its model may have: every input wired, each fitting."""
    assert isinstance(step.inputs, dict)
    wanted = {t.name: t for t in signature.inputs}
    if set(step.inputs) != set(wanted):
        raise SpecError(f"{step.describe()} wires inputs {sorted(step.inputs)}; {label} takes {sorted(wanted)}")
    for name, src in step.inputs.items():
        have, want = tensors[src], wanted[name]
        if not fits(have, want):
            raise SpecError(
                f"{step.describe()}: {label}'s input {name!r} is {want.datatype.value} {want.shape}, but it is wired "
                f"to {_show(src, have)}"
            )
