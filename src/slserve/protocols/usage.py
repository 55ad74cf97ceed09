"""A key's usage for a month (`GET /v1/usage`): exact integer micro-units, with the same amounts as decimal
strings."""

from __future__ import annotations

from pydantic import Field

from slserve.protocols import Reply


class StepLine(Reply):
    step: str
    model: str
    version: str
    tier: str
    requests: int
    compute_ms: float
    charged_micros: int
    charged: str


class UsageLine(Reply):
    model: str
    version: str
    tier: str
    requests: int = Field(description="charged requests")
    failed: int = Field(description="recorded, not charged")
    abandoned: int = Field(description="the client left before the answer")
    tokens: int
    compute_ms: float
    charged_micros: int = Field(description="integer millionths of the currency")
    charged: str = Field(description="the same amount as a decimal string")
    compute_cost_micros: int = Field(description="what the compute cost the platform")
    compute_cost: str
    steps: list[StepLine] | None = Field(None, description="a pipeline's model steps")


class UsageTotal(Reply):
    requests: int
    failed: int
    abandoned: int
    charged_micros: int
    charged: str
    compute_cost_micros: int
    compute_cost: str


class UsageReport(Reply):
    key_id: str
    tenant: str
    month: str
    currency: str
    usage: list[UsageLine]
    total: UsageTotal
