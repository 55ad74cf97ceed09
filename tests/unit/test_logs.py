"""The gateway's log lines: JSON and plain text carry the same fields."""

from __future__ import annotations

import logging

import orjson

from slserve.gateway.logs import JsonFormatter, TextFormatter


def _record(**fields: object) -> logging.LogRecord:
    record = logging.LogRecord("slserve.access", logging.INFO, __file__, 1, "infer", None, None)
    record.fields = fields
    return record


def test_text_lines_carry_every_field_the_json_lines_carry() -> None:
    fields = {"status": 200, "function": "minilm", "request_id": "r-1", "cost": 12, "ms": 3.25, "note": "two words"}
    doc = orjson.loads(JsonFormatter().format(_record(**fields)))
    text = TextFormatter().format(_record(**fields, error=None))
    assert all(doc[k] == v for k, v in fields.items())
    assert text.endswith(
        'INFO slserve.access infer status=200 function=minilm request_id=r-1 cost=12 ms=3.25 note="two words"'
    )
    assert "error=" not in text  # absent fields are left out, as in JSON where they are null
