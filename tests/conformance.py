"""Real answers held to the published OpenAPI document (the schemathesis test's random requests rarely reach a
200 from a model: these do)."""

from __future__ import annotations

import httpx
import schemathesis

from slserve.gateway.endpoints import ENDPOINTS
from slserve.gateway.openapi import openapi_document

DOCUMENT = schemathesis.openapi.from_dict(openapi_document())


def conforms(response: httpx.Response) -> httpx.Response:
    """`response` as the document publishes its status, content type and body for the endpoint that answered
    (raises the failures if not)."""
    request = response.request
    endpoint = next(
        e for e in ENDPOINTS if e.method == request.method and e.pattern.fullmatch(request.url.path) is not None
    )
    DOCUMENT[endpoint.path][endpoint.method].validate_response(response)
    return response
