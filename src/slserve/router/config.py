"""Routes: what a model name, a version or alias, and a cost tier mean. Parsed from `routes.toml`, validated
once; the resolver only ever sees a valid `RoutesConfig`.

    [tiers.economy]                 # tiers, cheapest first by `rank`; prices in integer micro-units of currency
    rank = 0
    price_per_request = 20          # 0.000020 per request
    price_per_unit = 1              # per unit of work: a row, or 1,000 tokens, times the function's weight
    fallback = "downgrade"          # when this tier cannot serve: "downgrade" (to cheaper tiers) or "none"

    [models.minilm]
    default = "stable"              # the alias a request without version gets (default "latest")

    [models.minilm.aliases.stable]
    version = "1"                   # one version, or another alias

    [models.minilm.aliases.canary]
    split = { "1" = 90, "2" = 10 }  # weighted versions, sticky per routing key; weights sum to 100
    shadow = { version = "2", percent = 5 }

    [costs]                         # what compute costs the house, micro-units per millisecond (the ledger's cost)
    cpu_ms = 1
    gpu_ms = 8
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slserve.errors import SpecError
from slserve.spec import NAME, VERSION


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Shadow(_Strict):
    version: Annotated[str, Field(pattern=VERSION)]
    percent: Annotated[float, Field(gt=0, le=100)]


class Alias(_Strict):
    version: Annotated[str | None, Field(pattern=VERSION)] = None
    split: dict[str, Annotated[int, Field(ge=0, le=100)]] | None = None
    shadow: Shadow | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.version is None) == (self.split is None):
            raise ValueError("an alias names either `version` or `split`, not both and not neither")
        if self.split is not None and sum(self.split.values()) != 100:
            raise ValueError(f"split weights must sum to 100, they sum to {sum(self.split.values())}")
        return self


class ModelRoutes(_Strict):
    default: Annotated[str, Field(pattern=VERSION)] = "latest"
    aliases: dict[Annotated[str, Field(pattern=VERSION)], Alias] = Field(default_factory=dict)


class Tier(_Strict):
    rank: Annotated[int, Field(ge=0, description="cost order: a lower rank is cheaper")]
    price_per_request: Annotated[int, Field(ge=0, description="micro-units of currency")] = 0
    price_per_unit: Annotated[int, Field(ge=0, description="micro-units per unit of work (slserve.router.pricing)")] = 0
    fallback: Literal["downgrade", "none"] = "downgrade"
    # A function of this tier that names a GPU, where the target would run it on the CPU: "degrade" serves it
    # there (x-slserve-degraded, billed as the tier below), "refuse" leaves it to fallback or a 503.
    without_gpu: Literal["degrade", "refuse"] = "degrade"

    @model_validator(mode="before")
    @classmethod
    def _no_compute_price(cls, data: Any) -> Any:
        if isinstance(data, dict) and "price_per_compute_ms" in data:
            raise ValueError(
                "price_per_compute_ms is gone: a price no longer depends on the host's load; set "
                "price_per_unit (micro-units per row, or per 1,000 tokens, times the function's pricing.weight)"
            )
        return data


class Costs(_Strict):
    """What compute costs the house (micro-units per millisecond): the ledger's cost beside each price."""

    cpu_ms: Annotated[float, Field(ge=0)] = 1.0
    gpu_ms: Annotated[float, Field(ge=0)] = 8.0


DEFAULT_TIERS = {
    "economy": Tier(rank=0, price_per_request=10, price_per_unit=5),
    "standard": Tier(rank=1, price_per_request=20, price_per_unit=10),
    "premium": Tier(rank=2, price_per_request=50, price_per_unit=20, fallback="downgrade"),
}


class RoutesConfig(_Strict):
    tiers: dict[Annotated[str, Field(pattern=NAME)], Tier] = Field(default_factory=lambda: dict(DEFAULT_TIERS))
    models: dict[Annotated[str, Field(pattern=NAME)], ModelRoutes] = Field(default_factory=dict)
    costs: Costs = Costs()

    @model_validator(mode="after")
    def _ranks_unique(self) -> Self:
        ranks = [t.rank for t in self.tiers.values()]
        if len(set(ranks)) != len(ranks):
            raise ValueError(f"tier ranks must be distinct (they order tiers by cost): {ranks}")
        return self


def load_routes(path: Path) -> RoutesConfig:
    """`routes.toml`, or the defaults (every model's `latest`, the three default tiers) when it does not exist."""
    if not path.exists():
        return RoutesConfig()
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from None
    try:
        return RoutesConfig.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise SpecError(f"{path}: {problems}") from None
