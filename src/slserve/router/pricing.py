"""What a request costs its caller (its price) and what it cost the house (its compute cost).

A price depends only on the request, never on the host's load: its tier, and the work it asks for in its
function's unit (`[pricing]` in function.toml):

    price = tier.price_per_request + ceil(work x tier.price_per_unit)
    work  = rows x weight                 per = "row": the rows of the request (its first input's first dimension)
    work  = tokens / 1000 x weight        per = "1k-tokens": the tokens the function's tokenizer counts

Identical requests cost the same, and a caller can work a price out before sending (a model's metadata
publishes its tier's prices, its unit and its weight). The compute a request measured is what it cost the house,
recorded beside the price: `compute_cost = ceil(compute_ms x costs.cpu_ms)` (`costs.gpu_ms` on a GPU), so
margins per tier stay visible. A pipeline charges the sum of its model steps.
"""

from __future__ import annotations

import math
from typing import Any

from slserve.router.config import Costs, Tier
from slserve.spec import Pricing

DIGITS = 9  # a product like 3 x 0.1 rounds to its decimal value before the ceiling, not up to the next unit


def work(pricing: Pricing, rows: int, tokens: int | None) -> float:
    """The request's work units."""
    if pricing.per == "1k-tokens":
        return (tokens or 0) / 1000 * pricing.weight
    return rows * pricing.weight


def price(tier: Tier, pricing: Pricing, rows: int, tokens: int | None) -> int:
    """Micro-units of currency the caller is charged."""
    return tier.price_per_request + math.ceil(round(work(pricing, rows, tokens) * tier.price_per_unit, DIGITS))


def compute_cost(costs: Costs, compute_ms: float, device: str | None) -> int:
    """Micro-units of currency the request's measured compute cost the house."""
    rate = costs.gpu_ms if device is not None and device.startswith("cuda") else costs.cpu_ms
    return math.ceil(round(compute_ms * rate, DIGITS))


def published(tier_name: str, tier: Tier, pricing: Pricing) -> dict[str, Any]:
    """The price as a model's metadata publishes it: enough for a caller to compute it."""
    units = "rows" if pricing.per == "row" else "tokens / 1000"
    return {
        "tier": tier_name,
        "currency": "micro-units",
        "per_request": tier.price_per_request,
        "per_unit": tier.price_per_unit,
        "unit": pricing.per,
        "weight": pricing.weight,
        "formula": f"per_request + ceil({pricing.weight:g} x {units} x per_unit)",
    }
