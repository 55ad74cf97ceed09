"""What an admin key sends to slserve's own endpoints."""

from __future__ import annotations

from pydantic import Field

from slserve.protocols import Request


class DriftPin(Request):
    model: str = Field(min_length=1)
    version: str | None = Field(None, description="default: the version the model's default route serves")
