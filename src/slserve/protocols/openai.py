"""OpenAI's embeddings API, as its official client speaks it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema

from slserve.protocols import Reply, Request

MAX_INPUTS = 2048  # OpenAI's own limit per request

Text = Annotated[str, Field(min_length=1)]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# `input` is a text or a list of them; read as a list, published as either
Texts = Annotated[
    list[Text],
    BeforeValidator(_as_list),
    Field(min_length=1, max_length=MAX_INPUTS),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": MAX_INPUTS},
            ],
            "description": f"a text, or a list of texts (at most {MAX_INPUTS}); token-id arrays are not taken",
        }
    ),
]


class EmbeddingsRequestBody(Request):
    model: Text = Field(description="a model, model:alias, model@version, or a function's name")
    input: Texts
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: little-endian float32")
    dimensions: int | None = Field(None, description="if given, must equal the model's dimension")
    tier: str | None = Field(None, description="cost tier (also the x-slserve-tier header)")
    truncate: bool = Field(False, description="cut texts past the model's length instead of refusing them")
    user: str | None = None


class Embedding(Reply):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingsUsage(Reply):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponseBody(Reply):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage


class OpenAIError(Reply):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(Reply):
    error: OpenAIError


class OpenAIModel(Reply):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OpenAIModelList(Reply):
    object: Literal["list"]
    data: list[OpenAIModel]
