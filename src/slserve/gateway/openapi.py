"""The OpenAPI document of the gateway, made from its one list of endpoints and the protocols' models: what it
publishes is what the gateway validates and answers."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

import slserve
from slserve.gateway.endpoints import BINARY, ENDPOINTS, JSON, Endpoint
from slserve.protocols.openai import OpenAIErrorBody
from slserve.protocols.v2 import ErrorBody

ERRORS = {
    400: "the request does not match the protocol or the model's signature",
    401: "no API key, or a wrong, revoked or expired one",
    403: "the key does not open this model, tier or endpoint",
    404: "unknown model or version",
    408: "the body arrived too slowly",
    409: "a request with the same Idempotency-Key is still running, or its answer was not kept",
    413: "body or tensor elements over the server's limits",
    422: "an Idempotency-Key reused with a different request",
    429: "a key's rate, concurrency or monthly quota, or the queue, is full; retry after Retry-After seconds",
    502: "the instance died while serving, twice",
    503: "the function cannot start or fit in memory, the ledger cannot record, or the server is shutting down",
    504: "no answer within the server's or the client's timeout",
}
KEY_ERRORS = (401, 403)  # what any endpoint behind a key may answer
PUBLIC_METRICS = (401, 403)  # /metrics when public_metrics is off, or a presented key is not an admin's


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _content(schema: dict[str, Any], binary: bool = False) -> dict[str, Any]:
    content = {JSON: {"schema": schema}}
    return {**content, BINARY: {"schema": {"type": "string", "format": "binary"}}} if binary else content


def _errors(endpoint: Endpoint) -> dict[str, Any]:
    body = _ref(OpenAIErrorBody if endpoint.openai else ErrorBody)
    codes: tuple[int, ...]
    if endpoint.access == "public":
        codes = PUBLIC_METRICS if endpoint.front else ()
    elif endpoint.front:
        codes = tuple(ERRORS)
    else:
        codes = (400, *KEY_ERRORS, 404, 413, 503) if endpoint.body or endpoint.params else (*KEY_ERRORS, 404)
    return {str(code): {"description": ERRORS[code], "content": _content(body)} for code in codes}


def _answer(endpoint: Endpoint) -> dict[str, Any]:
    if endpoint.status == 204:
        return {"description": endpoint.summary}
    if endpoint.media != JSON:
        return {"description": endpoint.summary, "content": {endpoint.media: {"schema": {"type": "string"}}}}
    schema = _ref(endpoint.reply) if endpoint.reply else {"type": "object"}
    return {"description": endpoint.summary, "content": _content(schema, endpoint.binary)}


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in endpoint.path_params]
    params += [
        {"name": p.name, "in": p.where, "required": False, "schema": p.schema, "description": p.description}
        for p in endpoint.params
    ]
    responses = {str(endpoint.status): _answer(endpoint), **_errors(endpoint)}
    if endpoint.unavailable:
        responses["503"] = {**_answer(endpoint), "description": "not now, and why"}
    op: dict[str, Any] = {"summary": endpoint.summary, "responses": responses}
    if params:
        op["parameters"] = params
    if endpoint.body is not None:
        op["requestBody"] = {"required": True, "content": _content(_ref(endpoint.body), endpoint.binary)}
    if endpoint.access == "public":
        op["security"] = []
    elif endpoint.access == "admin":
        op["description"] = "needs an admin key"
    return op


@cache
def openapi_document() -> dict[str, Any]:
    requests: set[type[BaseModel]] = {e.body for e in ENDPOINTS if e.body}
    replies: set[type[BaseModel]] = {e.reply for e in ENDPOINTS if e.reply} | {ErrorBody, OpenAIErrorBody}
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "validation") for m in sorted(requests, key=lambda m: m.__name__)),
        *((m, "serialization") for m in sorted(replies, key=lambda m: m.__name__)),
    ]
    _, schemas = models_json_schema(models, ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {"title": "slserve gateway", "version": slserve.__version__},
        "paths": paths,
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "sls_<key id>_<secret>"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }
