"""The route table: every model's versions, aliases and tiers, checked against the functions that exist, and
the resolution of one request to an ordered list of candidate functions.

Resolution is a pure function of (model, version-or-alias, routing key, tier, upgrade permission, a shadow
draw): no clock, no randomness inside, so it is exact to test and cheap to run (a hash and a few dict lookups).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from slserve.errors import InvalidInput, ModelNotFound, SpecError
from slserve.router.config import Alias, Costs, RoutesConfig, Tier
from slserve.spec import NamedSpec, Signature, version_order

BUCKETS = 10_000  # a split's weights (percent) map onto this many hash buckets


@dataclass(frozen=True)
class Split:
    """Versions with cumulative bucket bounds: version i owns buckets [bounds[i-1], bounds[i])."""

    versions: tuple[str, ...]
    bounds: tuple[int, ...]

    def pick(self, bucket: int) -> str:
        for version, bound in zip(self.versions, self.bounds, strict=True):
            if bucket < bound:
                return version
        return self.versions[-1]


@dataclass(frozen=True)
class ResolvedAlias:
    split: Split
    shadow_version: str | None = None
    shadow_percent: float = 0.0


@dataclass(frozen=True)
class ModelTable:
    versions: dict[str, dict[str, list[str]]]  # version -> tier -> functions
    aliases: dict[str, ResolvedAlias]
    default: str


@dataclass(frozen=True)
class Route:
    model: str
    version: str
    alias: str | None  # None when the request pinned a version
    tier: str  # the tier asked for (or defaulted)
    candidates: list[tuple[str, str]]  # (tier, function) in the order to try: the tier first, then fallbacks
    shadow: list[tuple[str, str]] = field(default_factory=list)  # candidates of the shadow version, if drawn


def sticky_bucket(model: str, alias: str, key: str) -> int:
    digest = hashlib.blake2b(f"{model}\0{alias}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % BUCKETS


class RouteTable:
    def __init__(self, tiers: dict[str, Tier], models: dict[str, ModelTable], costs: Costs | None = None) -> None:
        self.tiers = tiers
        self.models = models
        self.costs = costs or Costs()
        self._by_rank = sorted(tiers, key=lambda t: tiers[t].rank)
        self._memo: dict[tuple[str, str, str, bool], list[tuple[str, str]]] = {}  # the table is immutable

    @classmethod
    def build(cls, functions: Iterable[NamedSpec], config: RoutesConfig) -> RouteTable:
        """Check `config` against the functions; any inconsistency is a SpecError naming it (and the caller keeps
        the routes it had)."""
        functions_list = list(functions)
        versions: dict[str, dict[str, dict[str, list[str]]]] = {}
        signatures: dict[tuple[str, str], tuple[str, Signature]] = {}
        for fdef in functions_list:
            spec = fdef.spec
            if spec.tier is not None and spec.tier not in config.tiers:
                raise SpecError(
                    f"function {fdef.name!r} is in tier {spec.tier!r}; the tiers are {sorted(config.tiers)}"
                )
            first = signatures.setdefault((spec.model.name, spec.model.version), (fdef.name, spec.signature))
            if first[1] != spec.signature:
                raise SpecError(
                    f"functions {first[0]!r} and {fdef.name!r} serve {spec.model.name} version {spec.model.version} "
                    "with different signatures; a model version has one signature (give one a new version)"
                )
            by_tier = versions.setdefault(spec.model.name, {}).setdefault(spec.model.version, {})
            for tier in [spec.tier] if spec.tier is not None else config.tiers:  # None: a pipeline, in every tier
                by_tier.setdefault(tier, []).append(fdef.name)
        for fdef in functions_list:
            if fdef.name in versions and fdef.name != fdef.spec.model.name:
                raise SpecError(
                    f"function {fdef.name!r} (model {fdef.spec.model.name!r}) has the name of another model, which "
                    "would hide it from requests that name it; rename the function"
                )
        unknown = sorted(set(config.models) - set(versions))
        if unknown:
            raise SpecError(f"routes name model(s) {unknown} that no function serves; models: {sorted(versions)}")
        models = {}
        for model, by_version in versions.items():
            routes = config.models.get(model)
            aliases = _resolve_aliases(model, set(by_version), routes.aliases if routes else {})
            default = routes.default if routes else "latest"
            if default not in aliases and default not in by_version:
                raise SpecError(f"model {model!r}: default {default!r} is neither a version nor an alias")
            models[model] = ModelTable(by_version, aliases, default)
        return cls(dict(config.tiers), models, config.costs)

    def below(self, tier: str) -> str:
        """The nearest cheaper tier (the tier itself when it is the cheapest)."""
        cheaper = [t for t in self._by_rank if self.tiers[t].rank < self.tiers[tier].rank]
        return cheaper[-1] if cheaper else tier

    def resolve(
        self,
        model: str,
        selector: str | None,
        routing_key: str,
        tier: str | None,
        allow_upgrade: bool = False,
        shadow_draw: float = 1.0,
    ) -> Route:
        table = self.models.get(model)
        if table is None:
            raise ModelNotFound(f"unknown model {model!r}; this server has {sorted(self.models)}")
        wanted = selector or table.default
        alias: str | None = None
        shadow_version = None
        if wanted in table.versions:
            version = wanted
        elif wanted in table.aliases:
            alias, resolved = wanted, table.aliases[wanted]
            versions = resolved.split.versions
            version = (
                versions[0] if len(versions) == 1 else resolved.split.pick(sticky_bucket(model, wanted, routing_key))
            )
            if resolved.shadow_version and shadow_draw * 100 < resolved.shadow_percent:
                shadow_version = resolved.shadow_version
        else:
            names = sorted(table.versions, key=version_order) + sorted(table.aliases)
            raise ModelNotFound(f"model {model!r} has no version or alias {wanted!r}; it has {names}")
        chosen_tier = tier or self._default_tier(table.versions[version])
        if chosen_tier not in self.tiers:
            raise InvalidInput(f"unknown tier {chosen_tier!r}; the tiers are {self._by_rank}")
        memo_key = (model, version, chosen_tier, allow_upgrade)
        candidates = self._memo.get(memo_key)
        if candidates is None:
            candidates = self._memo[memo_key] = self.candidates(table.versions[version], chosen_tier, allow_upgrade)
        if not candidates:
            offered = sorted(table.versions[version], key=lambda t: self.tiers[t].rank)
            hint = "" if allow_upgrade else "; allow an upgrade to use a more expensive one"
            raise ModelNotFound(
                f"{model} version {version} has no function in tier {chosen_tier!r} or below "
                f"(it is offered in {offered}){hint}"
            )
        # The caller is never billed for a shadow: it may run in any tier the shadow version has.
        shadow = self.candidates(table.versions[shadow_version], chosen_tier, True) if shadow_version else []
        return Route(model, version, alias, chosen_tier, list(candidates), shadow)

    def candidates(self, by_tier: dict[str, list[str]], tier: str, allow_upgrade: bool) -> list[tuple[str, str]]:
        """The chosen tier's functions, then (if its policy allows) cheaper tiers from the nearest down, then (only
        if the caller allowed it) more expensive tiers from the nearest up. Never an unasked-for upgrade."""
        rank = self.tiers[tier].rank
        order = [tier]
        if self.tiers[tier].fallback == "downgrade":
            order += [t for t in reversed(self._by_rank) if self.tiers[t].rank < rank]
        if allow_upgrade:
            order += [t for t in self._by_rank if self.tiers[t].rank > rank]
        return [(t, f) for t in order for f in by_tier.get(t, [])]

    def _default_tier(self, by_tier: dict[str, list[str]]) -> str:
        """Without a tier asked for: "standard" when offered, else the cheapest tier the version has."""
        if "standard" in by_tier:
            return "standard"
        return min(by_tier, key=lambda t: self.tiers[t].rank)


def _resolve_aliases(model: str, versions: set[str], aliases: dict[str, Alias]) -> dict[str, ResolvedAlias]:
    clash = sorted(set(aliases) & versions)
    if clash:
        raise SpecError(f"model {model!r}: alias name(s) {clash} are also version names; rename the alias")
    latest = max(versions, key=version_order)
    out = {"latest": ResolvedAlias(Split((latest,), (BUCKETS,)))}

    def target(name: str, seen: tuple[str, ...]) -> Split:
        if name in versions:
            return Split((name,), (BUCKETS,))
        if name in seen:
            raise SpecError(f"model {model!r}: aliases form a cycle: {' -> '.join((*seen, name))}")
        if name == "latest" and "latest" not in aliases:
            return out["latest"].split
        if name not in aliases:
            raise SpecError(
                f"model {model!r}: {seen[-1]!r} points at {name!r}, which is neither a version "
                f"({sorted(versions, key=version_order)}) nor an alias"
            )
        alias = aliases[name]
        if alias.version is not None:
            return target(alias.version, (*seen, name))
        assert alias.split is not None
        unknown = sorted(set(alias.split) - versions)
        if unknown:
            raise SpecError(
                f"model {model!r}: alias {name!r} splits over unknown version(s) {unknown}; its versions are "
                f"{sorted(versions, key=version_order)} (a version is a function folder with that [model] version)"
            )
        picked = [(v, w) for v, w in alias.split.items() if w > 0]
        bounds, total = [], 0
        for _, weight in picked:
            total += weight * BUCKETS // 100
            bounds.append(total)
        return Split(tuple(v for v, _ in picked), tuple(bounds))

    for name, alias in aliases.items():
        split = target(name, ())
        if alias.shadow is not None and alias.shadow.version not in versions:
            raise SpecError(
                f"model {model!r}: alias {name!r} shadows unknown version {alias.shadow.version!r}; its versions "
                f"are {sorted(versions, key=version_order)}"
            )
        out[name] = ResolvedAlias(
            split,
            alias.shadow.version if alias.shadow else None,
            alias.shadow.percent if alias.shadow else 0.0,
        )
    return out
