"""Function specs: what `functions/<name>/function.toml` declares, validated once at the edge.

Everything inside slserve passes these typed objects around, never raw dicts.
"""

from __future__ import annotations

import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slserve.errors import SpecError

SPEC_FILENAME = "function.toml"
NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"  # a function's, a model's, a tier's
Target = Literal["local", "aws", "modal"]  # where a function runs
TARGETS: tuple[Target, ...] = get_args(Target)
VERSION = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"
_IMPORT_REF = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


def version_order(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order: "2" < "10", "1.9" < "1.10"; numbers sort before words."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[._-]", version))


class Datatype(StrEnum):
    """Open Inference Protocol v2 tensor datatypes."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


class Framework(StrEnum):
    TORCH = "torch"
    ONNX = "onnx"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    datatype: Datatype
    shape: list[int] = Field(description="Dimensions; -1 marks a variable one. The first is the batch dim.")

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        if not shape:
            raise ValueError("needs at least one dimension (the first is the batch dimension, use -1)")
        bad = [d for d in shape if d == 0 or d < -1]
        if bad:
            raise ValueError(f"dimensions must be positive or -1 (variable), got {bad}")
        return shape


class Signature(_Strict):
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        for side in ("inputs", "outputs"):
            names = [t.name for t in getattr(self, side)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{side} names must be unique, repeated: {dupes}")
        return self

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)


class ModelRef(_Strict):
    name: Annotated[str, Field(pattern=NAME)]
    version: Annotated[str, Field(pattern=VERSION)] = "1"
    description: str = ""


class Source(_Strict):
    """Where the model comes from at build time.

    torch: `factory` builds the module's architecture; it is called on the meta device at load time, so it must
    not read weights itself. Weights come from `weights` (a safetensors file) or, without it, from the factory's
    own initialisation under `seed` (deterministic synthetic models).
    onnx: `path` (an .onnx file in the function folder) or `export` (a callable returning an onnx ModelProto).
    """

    framework: Framework
    factory: Annotated[str | None, Field(pattern=_IMPORT_REF)] = None
    weights: str | None = None
    weights_prefix: str = ""
    seed: int = 0
    path: str | None = None
    export: Annotated[str | None, Field(pattern=_IMPORT_REF)] = None
    quantize: Literal["int8", "fp16"] | None = Field(
        default=None,
        description="onnx: derive a variant at build: 'int8' (dynamic quantization, for CPUs) or 'fp16' (half "
        "precision weights and activations, fp32 inputs and outputs, for GPUs)",
    )
    min_agreement: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.99, description="quantize: refuse the variant if it agrees less with fp32 (min cosine / labels)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.framework is Framework.TORCH:
            if self.factory is None:
                raise ValueError("framework 'torch' needs factory = 'package.module:function'")
            if self.path or self.export:
                raise ValueError("'path' and 'export' are for framework 'onnx'; torch uses factory (+ weights)")
            if self.quantize:
                raise ValueError("quantize is for framework 'onnx' (variants derived by ONNX Runtime's tools)")
        else:
            if (self.path is None) == (self.export is None):
                raise ValueError("framework 'onnx' needs exactly one of path = 'model.onnx' or export = 'mod:fn'")
            if self.factory or self.weights:
                raise ValueError("'factory' and 'weights' are for framework 'torch'; onnx uses path or export")
        return self


class Processor(_Strict):
    """Optional pre/post-processing around the graph, e.g. a tokenizer: signature tensors <-> graph tensors."""

    factory: Annotated[str, Field(pattern=_IMPORT_REF)]
    assets: list[str] = Field(default_factory=list, description="Files copied into the artifact for it")


class Resources(_Strict):
    memory_mb: Annotated[int, Field(ge=64, le=1_048_576)] = 2048
    aws_memory_mb: Annotated[int | None, Field(ge=128, le=10_240)] = Field(
        default=None,
        description="Lambda's memory when it should differ from memory_mb (a new AWS account may allow only 3008)",
    )
    gpu: str | None = Field(default=None, description="GPU type such as 'T4', 'A10G', 'H100'; none = CPU")
    threads: Annotated[int, Field(ge=1, le=256)] = 1


class Scaling(_Strict):
    min_instances: Annotated[int, Field(ge=0)] = 0
    max_instances: Annotated[int, Field(ge=1)] = 4
    target_concurrency: Annotated[int, Field(ge=1)] = 8
    idle_seconds: Annotated[float, Field(gt=0)] = 60.0
    queue_size: Annotated[int, Field(ge=0, description="requests that may wait for an instance; more get 429")] = 1024

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_instances > self.max_instances:
            raise ValueError(f"min_instances ({self.min_instances}) exceeds max_instances ({self.max_instances})")
        return self


class Batching(_Strict):
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 1
    max_delay_ms: Annotated[float, Field(ge=0, le=10_000)] = 0.0


class Limits(_Strict):
    """What one request may ask of the function (deployment settings: changing them rebuilds nothing)."""

    max_rows: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=256,
        description="rows (the first, batch dimension) one request may carry; more are refused (413) before they "
        "queue, so that no request can take more memory than `resources.memory_mb` allows",
    )
    max_bytes_per_element: Annotated[int, Field(ge=1, le=1 << 30)] = Field(
        default=65_536,
        description="longest BYTES element (a text, an encoded image) one request may carry; longer ones are "
        "refused (413). With max_rows and the signature it bounds the body a request may send",
    )


class Pricing(_Strict):
    """The unit of work a request's price counts (`slserve.router.pricing`); the tier says what a unit costs."""

    per: Literal["row", "1k-tokens"] = Field(
        default="row", description="'row': rows of the request; '1k-tokens': thousands of tokens its texts make"
    )
    weight: Annotated[float, Field(gt=0, le=1_000_000)] = Field(
        default=1.0, description="work units per row (or per 1,000 tokens): how heavy this model is beside others"
    )


class Drift(_Strict):
    """Where drift is measured from: the build profiles the model on calibration inputs (its reference until an
    operator pins one from live traffic)."""

    calibration: Annotated[str | None, Field(pattern=_IMPORT_REF)] = Field(
        default=None,
        description="'module:function' returning inputs like the traffic to expect ({name: array}); default: "
        "slserve's built-in calibration set (a few sentences for text, standard normals for numbers)",
    )
    reference: Literal["build", "pinned"] = Field(
        default="build",
        description="'pinned': no build reference (when no calibration set looks like the traffic, e.g. inputs "
        "made by an upstream model): drift is measured once `slserve drift MODEL --pin` pins a live window",
    )


class FunctionSpec(_Strict):
    model: ModelRef
    source: Source
    signature: Signature
    processor: Processor | None = None
    tier: Annotated[str, Field(pattern=NAME)] = "standard"
    target: Target = Field(
        default="local",
        description="where it runs: this machine's processes, AWS Lambda, or Modal (a deployment setting)",
    )
    resources: Resources = Resources()
    scaling: Scaling = Scaling()
    batching: Batching = Batching()
    limits: Limits = Limits()
    pricing: Pricing = Pricing()
    drift: Drift = Drift()

    @property
    def framework(self) -> Framework:
        return self.source.framework


class ServingSpec(Protocol):
    """What routing, checking and billing a request need of a model version, whether a function serves it or a
    pipeline (`slserve.compose`) composes it."""

    @property
    def model(self) -> ModelRef: ...

    @property
    def tier(self) -> str | None: ...  # None: offered in every tier (a pipeline whose steps take the request's)

    @property
    def signature(self) -> Signature: ...

    @property
    def limits(self) -> Limits: ...


class NamedSpec(Protocol):
    """Anything that names a served model version and carries its spec: a folder's `FunctionDef`, a catalog's
    `Deployed`, a pipeline."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> ServingSpec: ...


class FunctionDef(BaseModel):
    """A spec together with where it lives: the function's name is its folder's name."""

    model_config = ConfigDict(frozen=True)

    name: str
    directory: Path
    spec: FunctionSpec

    @property
    def spec_path(self) -> Path:
        return self.directory / SPEC_FILENAME


def format_errors(path: Path | str, err: ValidationError) -> str:
    lines = [f"{path}: {err.error_count()} problem(s)"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling and section)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        got = e.get("input")
        shown = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {where}: {msg}{shown}")
    return "\n".join(lines)


def read_folder_toml(directory: Path, filename: str, missing: str = "") -> dict[str, Any]:
    """A function folder's TOML file (the folder's name checked first); SpecError says what is wrong where."""
    path = directory / filename
    if not re.match(NAME, directory.name):
        raise SpecError(f"{directory}: function folder names must match {NAME} (lowercase, digits, '-')")
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: not found{missing}") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from None


def load_function(directory: Path) -> FunctionDef:
    """Parse `directory/function.toml`; every problem is reported with file, field and what was expected."""
    path = directory / SPEC_FILENAME
    name = directory.name
    raw = read_folder_toml(directory, SPEC_FILENAME, f"; create one with `slserve init {name}`")
    try:
        spec = FunctionSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(format_errors(path, e)) from None
    return FunctionDef(name=name, directory=directory.resolve(), spec=spec)


def discover_functions(root: Path) -> list[FunctionDef]:
    """Every function under `root` (one folder each), sorted by name."""
    if not root.is_dir():
        raise SpecError(f"{root}: functions directory not found (pass --functions DIR)")
    return [load_function(d) for d in sorted(root.iterdir()) if (d / SPEC_FILENAME).is_file()]
