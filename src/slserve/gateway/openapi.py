"""The OpenAPI description of the gateway, generated from pydantic models of the v2 protocol's messages."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

import slserve
from slserve.spec import Datatype, TensorSpec


class InferInput(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: bytes of this tensor after the JSON")
    data: list[Any] | None = Field(None, description="row-major elements (flat or nested); omitted for binary data")


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data: true returns this output as binary")


class InferRequestBody(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="binary_data_output: true returns all as binary")
    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None = None


class InferOutput(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponseBody(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[InferOutput]


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong and how to fix it")
    code: str | None = Field(None, description="a stable machine-readable code")


class Price(BaseModel):
    """What a request costs, in micro-units: per_request + ceil(weight x units x per_unit), a unit being a row
    of the request or 1,000 of its tokens."""

    tier: str
    currency: str
    per_request: int
    per_unit: int
    unit: str
    weight: float
    formula: str


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    price: Price | None = None  # a function's; a pipeline charges the sum of its model steps


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class EmbeddingsRequestBody(BaseModel):
    model: str = Field(description="a model, model:alias, model@version, or a function's name")
    input: str | list[str] = Field(description="text, or a list of texts (at most 2048)")
    encoding_format: str = Field("float", description="float or base64 (little-endian float32)")
    dimensions: int | None = Field(None, description="if given, must equal the model's dimension")
    tier: str | None = Field(None, description="cost tier (also the x-slserve-tier header)")


class Embedding(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponseBody(BaseModel):
    object: str = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    error: OpenAIError


class UsageLine(BaseModel):
    model: str
    version: str
    tier: str
    requests: int = Field(description="charged requests")
    failed: int = Field(description="recorded, not charged")
    tokens: int
    compute_ms: float
    charged_micros: int = Field(description="integer millionths of the currency")
    charged: str = Field(description="the same amount as a decimal string")


class UsageReport(BaseModel):
    key_id: str
    tenant: str
    month: str
    currency: str
    usage: list[UsageLine]
    total: dict[str, int | str]


MODELS: list[type[BaseModel]] = [
    InferRequestBody,
    InferResponseBody,
    ErrorBody,
    ModelMetadata,
    ServerMetadata,
    EmbeddingsRequestBody,
    EmbeddingsResponseBody,
    OpenAIErrorBody,
    UsageReport,
]


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(body: type[BaseModel]) -> dict[str, Any]:
    return {
        "400": _json(body, "the request does not match the protocol or the model's signature"),
        "401": _json(body, "no API key, or a wrong, revoked or expired one"),
        "403": _json(body, "the key does not open this model, tier or endpoint"),
        "404": _json(body, "unknown model or version"),
        "413": _json(body, "body or tensor elements over the server's limits"),
        "422": _json(body, "an Idempotency-Key reused with a different request"),
        "429": _json(
            body,
            "a key's rate, concurrency or monthly quota, or the queue, is full; retry after Retry-After seconds",
        ),
        "502": _json(body, "the instance died while serving, twice"),
        "503": _json(body, "the function cannot start, the ledger cannot record, or the server is shutting down"),
        "504": _json(body, "no answer within the server's request timeout"),
    }


ERRORS = _errors(ErrorBody)
IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 255},
    "description": "a retry with the same key (and the same request) gets the first answer and is billed once",
}
MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}


def _infer(params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "post": {
            "summary": "Run inference (Open Inference Protocol v2; JSON or binary tensor data)",
            "parameters": [
                *params,
                {
                    "name": "Inference-Header-Content-Length",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1},
                    "description": "binary extension: length of the JSON part; binary tensors follow it",
                },
                IDEMPOTENCY,
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _ref(InferRequestBody)},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": {"200": _json(InferResponseBody, "the model's outputs"), **ERRORS},
        }
    }


def _get(model: type[BaseModel], summary: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": _json(model, summary)}}
    if params:
        op["parameters"] = params
        op["responses"]["404"] = ERRORS["404"]
    return {"get": op}


def _status(summary: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "yes"}, "503": {"description": "no"}},
    }
    if params:
        op["parameters"] = params
    return {"get": op}


@cache
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema([(m, "validation") for m in MODELS], ref_template="#/components/schemas/{model}")
    both = [MODEL, VERSION]
    return {
        "openapi": "3.1.0",
        "info": {"title": "slserve gateway", "version": slserve.__version__},
        "paths": {
            "/v2/health/live": {"get": {**_status("Is the server alive")["get"], "security": []}},
            "/v2/health/ready": {"get": {**_status("Can the server take requests")["get"], "security": []}},
            "/v2": _get(ServerMetadata, "Server metadata"),
            "/v2/models/{model}": _get(ModelMetadata, "Model metadata", [MODEL]),
            "/v2/models/{model}/versions/{version}": _get(ModelMetadata, "Model version metadata", both),
            "/v2/models/{model}/ready": _status("Can the model take requests", [MODEL]),
            "/v2/models/{model}/versions/{version}/ready": _status("Can the model version take requests", both),
            "/v2/models/{model}/infer": _infer([MODEL]),
            "/v2/models/{model}/versions/{version}/infer": _infer(both),
            "/v1/embeddings": {
                "post": {
                    "summary": "OpenAI-compatible embeddings for text-embedding models",
                    "parameters": [IDEMPOTENCY],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref(EmbeddingsRequestBody)}},
                    },
                    "responses": {
                        "200": _json(EmbeddingsResponseBody, "one embedding per input, and the tokens counted"),
                        **_errors(OpenAIErrorBody),
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "Text-embedding models (OpenAI format)",
                    "responses": {"200": {"description": "models"}},
                }
            },
            "/v1/usage": {
                "get": {
                    "summary": "The calling key's own usage for a month",
                    "parameters": [
                        {
                            "name": "month",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "pattern": r"^\d{4}-\d{2}$"},
                        }
                    ],
                    "responses": {"200": _json(UsageReport, "requests and charges per model, version and tier")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (no key needed)",
                    "security": [],
                    "responses": {"200": {"description": "text exposition format"}},
                }
            },
            "/slserve/functions": {
                "get": {
                    "summary": "Instances, queue and cold starts per function (admin key)",
                    "responses": {"200": {"description": "status"}},
                }
            },
            "/slserve/routes": {
                "get": {
                    "summary": "Routes in force and shadow comparisons (admin key)",
                    "responses": {"200": {"description": "routes"}},
                }
            },
            "/slserve/drift": {
                "get": {
                    "summary": "Each model version's drift from its reference, with shadow comparisons (admin key)",
                    "parameters": [
                        {"name": "model", "in": "query", "required": False, "schema": {"type": "string"}},
                    ],
                    "responses": {"200": {"description": "drift per version"}, **_errors(ErrorBody)},
                }
            },
            "/slserve/drift/pin": {
                "post": {
                    "summary": "The version's live window becomes its drift reference (admin key)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"model": {"type": "string"}, "version": {"type": "string"}},
                                    "required": ["model"],
                                }
                            }
                        },
                    },
                    "responses": {"200": {"description": "the version's drift, now against it"}, **_errors(ErrorBody)},
                }
            },
        },
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "sls_<key id>_<secret>"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }
