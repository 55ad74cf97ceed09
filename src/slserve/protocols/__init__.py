"""The messages of the gateway's protocols, each defined once: the pydantic model that validates a request is
the one the OpenAPI document publishes, and a response's model is the one the conformance test holds the live
server to. Requests ignore fields they do not know (clients send more than a protocol requires); responses
forbid them (a field the code adds without its model shows as a conformance failure, not as drift)."""

from __future__ import annotations

import reprlib
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from slserve.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)
SHOWN_PROBLEMS = 3  # a refusal names this many of the body's problems, then counts the rest
_SHORT = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 40, 40, 4, 3, 2


class Request(BaseModel):
    """A message a client sends: types exact (no "3" for 3), unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class Reply(BaseModel):
    """A message the server sends: every field it may carry is declared."""

    model_config = ConfigDict(extra="forbid")


def parse(model: type[M], body: bytes | str) -> M:
    """The body as `model`, or a 400 that says where it is wrong and what was expected."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise InvalidInput(refusal(e, model.__name__)) from None


def refusal(error: ValidationError, schema: str) -> str:
    """What was wrong, in the body's own terms: `inputs[0].shape[1]: should be >= 0, got -3`."""
    problems = error.errors(include_url=False)
    first = problems[0]
    if first["type"] == "json_invalid":
        said = first["ctx"].get("error", first["msg"])
        if "recursion limit" in said:
            return f"the request's JSON is nested too deeply to read ({said})"
        return f"the request's JSON is malformed: {said}"
    if not first["loc"] and first["type"] in ("model_type", "model_attributes_type"):
        return f"the request body must be a JSON object ({schema} in GET /openapi.json)"
    said = [_problem(p) for p in problems[:SHOWN_PROBLEMS]]
    more = len(problems) - SHOWN_PROBLEMS
    return "; ".join(said) + (f"; and {more} more" if more > 0 else "") + f" ({schema} in GET /openapi.json)"


def _problem(p: Any) -> str:
    where = _where(p["loc"])
    field = next((part for part in reversed(p["loc"]) if isinstance(part, str)), "value")
    kind, ctx = p["type"], p.get("ctx") or {}
    if kind == "missing":
        return f"{where} is missing"
    if kind == "enum":
        return f"{where}: unknown {field} {_shown(p['input'])}; use one of {ctx.get('expected', '')}"
    if kind == "too_short":
        return f"{where} must have at least {_items(ctx['min_length'])}"
    if kind == "too_long":
        return f"{where} has {_items(ctx['actual_length'])}; at most {ctx['max_length']}"
    message = p["msg"][0].lower() + p["msg"][1:]
    return f"{where}: {message.removeprefix('input ')}, got {_shown(p['input'])}"


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


def _where(loc: tuple[int | str, ...]) -> str:
    """('inputs', 0, 'shape') -> 'inputs[0].shape'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the body"


def _shown(value: Any) -> str:
    return _SHORT.repr(value)  # bounded: a hostile body's wrong value may be a huge list
