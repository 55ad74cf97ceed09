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


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


MODELS: list[type[BaseModel]] = [
    InferRequestBody,
    InferResponseBody,
    ErrorBody,
    ModelMetadata,
    ServerMetadata,
]


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


ERRORS = {
    "400": _json(ErrorBody, "the request does not match the protocol or the model's signature"),
    "404": _json(ErrorBody, "unknown model or version"),
    "413": _json(ErrorBody, "body over the size limit"),
    "429": _json(ErrorBody, "queue full; retry after Retry-After seconds"),
    "502": _json(ErrorBody, "the instance died while serving, twice"),
    "503": _json(ErrorBody, "the function cannot start or the server is shutting down"),
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
            "/v2/health/live": _status("Is the server alive"),
            "/v2/health/ready": _status("Can the server take requests"),
            "/v2": _get(ServerMetadata, "Server metadata"),
            "/v2/models/{model}": _get(ModelMetadata, "Model metadata", [MODEL]),
            "/v2/models/{model}/versions/{version}": _get(ModelMetadata, "Model version metadata", both),
            "/v2/models/{model}/ready": _status("Can the model take requests", [MODEL]),
            "/v2/models/{model}/versions/{version}/ready": _status("Can the model version take requests", both),
            "/v2/models/{model}/infer": _infer([MODEL]),
            "/v2/models/{model}/versions/{version}/infer": _infer(both),
            "/slserve/functions": {
                "get": {
                    "summary": "Instances, queue and cold starts per function",
                    "responses": {"200": {"description": "status"}},
                }
            },
        },
        "components": {"schemas": schemas["$defs"]},
    }
