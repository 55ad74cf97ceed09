"""Every endpoint of the gateway, listed once: Starlette's routes, the front's inference paths, which paths need
no key, and the OpenAPI document are all made from this list, so none can name a path the others do not."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel

from slserve.protocols.admin import DriftPin
from slserve.protocols.openai import EmbeddingsRequestBody, EmbeddingsResponseBody, OpenAIModelList
from slserve.protocols.usage import UsageReport
from slserve.protocols.v2 import (
    InferRequestBody,
    InferResponseBody,
    Live,
    ModelList,
    ModelMetadata,
    ModelReady,
    Ready,
    ServerMetadata,
)

JSON = "application/json"
BINARY = "application/octet-stream"
ADMIN_PREFIX = "/slserve/"  # every path under it needs an admin key (an unknown one too: no 404 without a key)
OPENAI_PREFIX = "/v1/"  # errors under it take OpenAI's shape, which its client turns into typed exceptions
Access = Literal["public", "key", "admin"]


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["query", "header"]
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Endpoint:
    path: str  # a template: {model} and {version} are path parameters
    summary: str
    handler: str  # the method that answers: the Front's when `front`, else the Gateway's (Starlette's route)
    reply: type[BaseModel] | None = None  # the 200's JSON body; None: a free-form object, or `media`
    method: Literal["GET", "POST"] = "GET"
    access: Access = "key"
    body: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()
    media: str = JSON
    binary: bool = False  # the v2 binary tensor extension: octet-stream bodies and replies beside JSON
    unavailable: bool = False  # a 503 answers with `reply` too (not ready, and why)
    front: bool = False  # answered before Starlette (inference streams its body, meters and bills)
    status: int = 200

    @cached_property
    def path_params(self) -> tuple[str, ...]:
        return tuple(re.findall(r"\{(\w+)\}", self.path))

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path)))

    @property
    def openai(self) -> bool:
        return self.path.startswith(OPENAI_PREFIX)


IDEMPOTENCY = Param(
    "Idempotency-Key",
    "header",
    {"type": "string", "minLength": 1, "maxLength": 255},
    "a retry with the same key (and the same request) gets the first answer and is billed once",
)
TIER = Param("x-slserve-tier", "header", {"type": "string"}, "the cost tier (else the key's or the model's default)")
TIMEOUT = Param(
    "x-slserve-timeout-ms",
    "header",
    {"type": "integer", "minimum": 1},
    "the client stops waiting after this: no work is queued or started past it",
)
HEADER_LENGTH = Param(
    "Inference-Header-Content-Length",
    "header",
    {"type": "integer", "minimum": 1},
    "binary extension: length of the JSON part; binary tensors follow it",
)
MONTH = Param("month", "query", {"type": "string", "pattern": r"^\d{4}-\d{2}$"}, "e.g. 2026-11 (default: this month)")
MODEL = Param("model", "query", {"type": "string"}, "one model only")

MODEL_PATH = "/v2/models/{model}"
VERSION_PATH = "/v2/models/{model}/versions/{version}"
INFER = "Run inference (Open Inference Protocol v2; JSON or binary tensor data)"

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(f"{MODEL_PATH}/infer", INFER, "v2", InferResponseBody, "POST", body=InferRequestBody, binary=True,
             params=(HEADER_LENGTH, IDEMPOTENCY, TIER, TIMEOUT), front=True),
    Endpoint(f"{VERSION_PATH}/infer", INFER, "v2", InferResponseBody, "POST", body=InferRequestBody, binary=True,
             params=(HEADER_LENGTH, IDEMPOTENCY, TIER, TIMEOUT), front=True),
    Endpoint("/v1/embeddings", "OpenAI-compatible embeddings for text-embedding models", "embeddings",
             EmbeddingsResponseBody, "POST", body=EmbeddingsRequestBody, params=(IDEMPOTENCY, TIER, TIMEOUT),
             front=True),
    Endpoint("/metrics", "Prometheus metrics (no key needed unless public_metrics is off; money only for an admin"
             " key)", "serve_metrics", access="public", media="text/plain", front=True),
    Endpoint("/v2/health/live", "Is the server alive", "live", Live, access="public"),
    Endpoint("/v2/health/ready", "Can the server take requests", "ready", Ready, access="public", unavailable=True),
    Endpoint("/v2", "Server metadata", "server_metadata", ServerMetadata),
    Endpoint("/v2/models", "Every model, function and pipeline the key opens", "models", ModelList),
    Endpoint(MODEL_PATH, "Model metadata", "model_metadata", ModelMetadata),
    Endpoint(VERSION_PATH, "Model version metadata", "model_metadata", ModelMetadata),
    Endpoint(f"{MODEL_PATH}/ready", "Can the model take requests", "model_ready", ModelReady, unavailable=True),
    Endpoint(f"{VERSION_PATH}/ready", "Can the model version take requests", "model_ready", ModelReady,
             unavailable=True),
    Endpoint("/v1/models", "Text-embedding models (OpenAI format)", "openai_models", OpenAIModelList),
    Endpoint("/v1/usage", "The calling key's own usage for a month", "usage", UsageReport, params=(MONTH,)),
    Endpoint("/openapi.json", "This document", "openapi"),
    Endpoint("/dashboard", "The operator's dashboard (it asks for an admin key)", "dashboard", access="public",
             media="text/html"),
    Endpoint("/favicon.ico", "No icon (what a browser asks of every page)", "no_icon", access="public", status=204),
    Endpoint("/slserve/functions", "Instances, queue, memory and cold starts per function, and the host",
             "functions_status", access="admin"),
    Endpoint("/slserve/routes", "Routes in force and shadow comparisons", "routes_status", access="admin"),
    Endpoint("/slserve/overview", "What the dashboard shows", "overview", access="admin"),
    Endpoint("/slserve/drift", "Each model version's drift from its reference, with shadow comparisons", "drift",
             access="admin", params=(MODEL,)),
    Endpoint("/slserve/drift/pin", "The version's live window becomes its drift reference", "drift_pin",
             method="POST", access="admin", body=DriftPin),
)  # fmt: skip
PUBLIC = frozenset(e.path for e in ENDPOINTS if e.access == "public")
FRONT = tuple(e for e in ENDPOINTS if e.front)  # inference first: the front tries them in order


def front_endpoint(path: str) -> tuple[Endpoint, dict[str, str]] | None:
    """The endpoint the front answers at `path`, with its path parameters; None: Starlette's."""
    for endpoint in FRONT:
        match = endpoint.pattern.fullmatch(path)
        if match is not None:
            return endpoint, match.groupdict()
    return None
