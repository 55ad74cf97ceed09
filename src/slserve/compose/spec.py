"""What `functions/<name>/pipeline.toml` declares: the pipeline's model and signature, its steps, its outputs.

[model]
name = "ticket-router"
version = "1"

[[signature.inputs]]  ...               # as in function.toml
[[signature.outputs]] ...

[[steps]]
name = "embed"
model = "minilm"                        # routed like a request: version or alias, tier
inputs = { text = "text" }              # the step's input <- a pipeline input, or "step.output"

[[steps]]
name = "customer"
lookup = "customers"                    # a feature table (`slserve features load`)
key = "customer_id"

[[steps]]
name = "joined"
op = "concat"                           # select, reshape, topk, concat, normalize
inputs = ["embed.embedding", "customer.features"]

[outputs]
label = "triage.label"                  # each pipeline output <- a step's output
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slserve.errors import SpecError
from slserve.spec import NAME, VERSION, Limits, ModelRef, Signature, format_errors, read_folder_toml

PIPELINE_FILENAME = "pipeline.toml"
# A source: a pipeline input's name, or "<step>.<output>".
_SOURCE = r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)?$"
Source = Annotated[str, Field(pattern=_SOURCE)]
Op = Literal["select", "reshape", "topk", "concat", "normalize"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Strict):
    """One node: a model (routed), a built-in op, or a feature lookup: exactly one of `model`, `op`, `lookup`."""

    name: Annotated[str, Field(pattern=NAME)]
    # a model step
    model: Annotated[str | None, Field(pattern=NAME)] = None
    version: Annotated[str | None, Field(pattern=VERSION)] = Field(
        default=None, description="a version or an alias (default: the model's default route)"
    )
    tier: Annotated[str | None, Field(pattern=NAME)] = Field(
        default=None, description="the tier this step runs in (default: the request's)"
    )
    # a built-in op: its inputs in order (a list), or by name for a model step (a table)
    op: Op | None = None
    inputs: dict[str, Source] | list[Source] = Field(default_factory=list)
    columns: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, description="select: columns to keep")
    shape: list[int] | None = Field(default=None, description="reshape: the shape after the batch dimension")
    k: Annotated[int | None, Field(ge=1, le=4096)] = Field(default=None, description="topk: how many")
    axis: int = Field(default=-1, description="concat: the axis to join on (not the batch axis)")
    # a feature lookup
    lookup: Annotated[str | None, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")] = None
    key: Source | None = Field(default=None, description="lookup: the tensor of entity keys (BYTES or INT64)")
    width: Annotated[int | None, Field(ge=1, le=65536)] = Field(
        default=None, description="lookup: features per key (checked against the table at each lookup)"
    )
    default: list[float] | None = Field(
        default=None, description="lookup: the features of an unknown key (without it, an unknown key is a 404)"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        kinds = [k for k in ("model", "op", "lookup") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"step {self.name!r} needs exactly one of model, op or lookup (has {kinds or 'none'})")
        if self.model is not None and not isinstance(self.inputs, dict):
            raise ValueError(f'step {self.name!r}: a model step\'s inputs are a table, e.g. {{ text = "text" }}')
        if self.op is not None and not isinstance(self.inputs, list):
            raise ValueError(f'step {self.name!r}: an op\'s inputs are a list, e.g. ["embed.embedding"]')
        if self.lookup is not None and (self.key is None or self.width is None):
            raise ValueError(f'step {self.name!r}: a lookup needs key = "<input or step.output>" and width = N')
        if self.default is not None and len(self.default) != self.width:
            raise ValueError(f"step {self.name!r}: default has {len(self.default)} values, width is {self.width}")
        if self.model is None and (self.version or self.tier):
            raise ValueError(f"step {self.name!r}: version and tier are for model steps")
        needs = {"select": "columns", "reshape": "shape", "topk": "k"}
        if self.op in needs and getattr(self, needs[self.op]) is None:
            raise ValueError(f"step {self.name!r}: op {self.op!r} needs {needs[self.op]} = ...")
        return self

    @property
    def sources(self) -> list[str]:
        """What this step reads, in order."""
        found = list(self.inputs.values()) if isinstance(self.inputs, dict) else list(self.inputs)
        return [*found, self.key] if self.key is not None else found

    def describe(self) -> str:
        if self.model is not None:
            return f"step {self.name!r} (model {self.model}{'@' + self.version if self.version else ''})"
        return f"step {self.name!r} ({self.op or 'lookup ' + str(self.lookup)})"


class PipelineSpec(_Strict):
    model: ModelRef
    tier: Annotated[str | None, Field(pattern=NAME)] = Field(
        default=None,
        description="None: offered in every tier, each model step running in the request's tier unless it pins one",
    )
    signature: Signature
    steps: list[Step] = Field(min_length=1)
    outputs: dict[str, Source]
    limits: Limits = Limits()

    @model_validator(mode="after")
    def _names(self) -> Self:
        names = [s.name for s in self.steps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"step names must be unique, repeated: {dupes}")
        clash = sorted(set(names) & {t.name for t in self.signature.inputs})
        if clash:
            raise ValueError(f"step names {clash} are also input names; rename the steps")
        declared = [t.name for t in self.signature.outputs]
        if sorted(declared) != sorted(self.outputs):
            raise ValueError(
                f"[outputs] must wire exactly the signature's outputs {declared}, has {sorted(self.outputs)}"
            )
        return self


class PipelineDef(BaseModel):
    """A pipeline spec together with its folder (its name is the folder's)."""

    model_config = ConfigDict(frozen=True)

    name: str
    directory: Path
    spec: PipelineSpec


def parse_pipeline(raw: dict[str, Any], where: str) -> PipelineSpec:
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(format_errors(where, e)) from None


def load_pipeline(directory: Path) -> PipelineDef:
    raw = read_folder_toml(directory, PIPELINE_FILENAME)
    spec = parse_pipeline(raw, str(directory / PIPELINE_FILENAME))
    return PipelineDef(name=directory.name, directory=directory.resolve(), spec=spec)


def discover_pipelines(root: Path) -> list[PipelineDef]:
    if not root.is_dir():
        return []
    return [load_pipeline(d) for d in sorted(root.iterdir()) if (d / PIPELINE_FILENAME).is_file()]
