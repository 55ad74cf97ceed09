"""Routes: what a model name, a version or alias, and a cost tier mean. Parsed from `routes.toml`, validated
once; the resolver only ever sees a valid `RoutesConfig`.

    [tiers.economy]                 # tiers, cheapest first by `rank`; prices in integer micro-units of currency
    rank = 0
    price_per_request = 20          # 0.000020 per request
    price_per_compute_ms = 1
    fallback = "downgrade"          # when this tier cannot serve: "downgrade" (to cheaper tiers) or "none"

    [models.minilm]
    default = "stable"              # the alias a request without version gets (default "latest")

    [models.minilm.aliases.stable]
    version = "1"                   # one version, or another alias

    [models.minilm.aliases.canary]
    split = { "1" = 90, "2" = 10 }  # weighted versions, sticky per routing key; weights sum to 100
    shadow = { version = "2", percent = 5 }
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slserve.errors import SpecError

NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
VERSION = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"


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
    price_per_compute_ms: Annotated[int, Field(ge=0, description="micro-units per compute millisecond")] = 0
    fallback: Literal["downgrade", "none"] = "downgrade"


DEFAULT_TIERS = {
    "economy": Tier(rank=0, price_per_request=10, price_per_compute_ms=1),
    "standard": Tier(rank=1, price_per_request=20, price_per_compute_ms=2),
    "premium": Tier(rank=2, price_per_request=50, price_per_compute_ms=4, fallback="downgrade"),
}


class RoutesConfig(_Strict):
    tiers: dict[Annotated[str, Field(pattern=NAME)], Tier] = Field(default_factory=lambda: dict(DEFAULT_TIERS))
    models: dict[Annotated[str, Field(pattern=NAME)], ModelRoutes] = Field(default_factory=dict)

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
