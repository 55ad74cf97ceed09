"""The Open Inference Protocol v2 (KServe / Triton): inference requests and replies, model and server metadata,
health. The tensors' data stays JSON here: numpy decodes it against the function's signature (`platform.v2`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, NonNegativeInt

from slserve.protocols import Reply, Request
from slserve.spec import Datatype, TensorSpec

MAX_DIMS = 32  # what the wire between the gateway and instances carries


class InputParameters(Request):
    binary_data_size: NonNegativeInt | None = Field(
        None, description="binary extension: this tensor's bytes, in order after the JSON header"
    )


class InferInput(Request):
    name: str
    datatype: Datatype
    shape: Annotated[list[NonNegativeInt], Field(max_length=MAX_DIMS)]
    parameters: InputParameters | None = None
    data: list[Any] | None = Field(None, description="row-major elements, flat or nested; omitted for binary data")


class OutputParameters(Request):
    binary_data: bool = Field(False, description="return this output as binary data")


class RequestedOutput(Request):
    name: str
    parameters: OutputParameters | None = None


class RequestParameters(Request):
    """The request-level parameters slserve reads; others are accepted and ignored."""

    binary_data_output: bool = Field(False, description="return every output as binary data")
    truncate: bool = Field(False, description="cut texts past the model's length instead of refusing them")
    tier: str | None = Field(None, description="cost tier (also the x-slserve-tier header)")
    allow_upgrade: bool | None = Field(None, description="a full tier may serve at the next dearer one")


class InferRequestBody(Request):
    id: str | None = None
    parameters: RequestParameters | None = None
    inputs: Annotated[list[InferInput], Field(min_length=1)]
    outputs: list[RequestedOutput] | None = None


class OutputTensorParameters(Reply):
    binary_data_size: int


class InferOutput(Reply):
    name: str
    datatype: Datatype
    shape: list[int]
    parameters: OutputTensorParameters | None = None
    data: list[Any] | None = None


class StepReport(Reply):
    """One step of a pipeline, in the reply's parameters; a model step says where it ran and what it cost."""

    name: str
    kind: str
    ms: float
    model: str | None = None
    version: str | None = None
    tier: str | None = None
    function: str | None = None
    queue_ms: float | None = None
    compute_ms: float | None = None
    cold_start_ms: float | None = None
    cost: int | None = None
    compute_cost: int | None = None


class ReplyParameters(Reply):
    steps: list[StepReport]


class InferResponseBody(Reply):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: ReplyParameters | None = None
    outputs: list[InferOutput]


class Price(Reply):
    """What a request costs, in micro-units: per_request + ceil(weight x units x per_unit), a unit being a row
    of the request or 1,000 of its tokens."""

    tier: str
    currency: str
    per_request: int
    per_unit: int
    unit: str
    weight: float
    formula: str


class ModelMetadata(Reply):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    price: Price | None = None  # a function's; a pipeline charges the sum of its model steps
    error: str | None = Field(None, description="why it cannot serve (a failed build)")


class ModelList(Reply):
    models: list[ModelMetadata]


class ServerMetadata(Reply):
    name: str
    version: str
    extensions: list[str]


class ErrorBody(Reply):
    error: str = Field(description="what was wrong and how to fix it")
    code: str = Field(description="a stable machine-readable code")


class Live(Reply):
    live: bool


class Ready(Reply):
    ready: bool
    functions: dict[str, bool] = Field(description="which functions can serve now")
    pipelines: dict[str, bool] | None = None


class ModelReady(Reply):
    name: str
    ready: bool
    reason: str | None = Field(None, description="why not, when not")
