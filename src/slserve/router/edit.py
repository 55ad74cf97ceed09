"""Editing routes.toml from the CLI: every change is validated against the functions before it is written
(atomically), and the file before it is kept, so `rollback` can put it back."""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from slserve.errors import SpecError
from slserve.router.config import Alias, ModelRoutes, RoutesConfig, Shadow, load_routes
from slserve.router.table import RouteTable, version_order
from slserve.spec import NamedSpec


def dump_routes(config: RoutesConfig) -> str:
    """TOML text for a RoutesConfig (only what differs from the defaults of each table)."""
    lines: list[str] = ["# slserve routes: versions, aliases and tiers. Edited by `slserve route ...`; reloaded live."]
    for name, tier in config.tiers.items():
        lines += ["", f"[tiers.{name}]"]
        lines += [f"{k} = {_value(v)}" for k, v in tier.model_dump().items()]
    for model, routes in config.models.items():
        lines += ["", f"[models.{model}]", f"default = {_value(routes.default)}"]
        for alias, target in routes.aliases.items():
            lines += ["", f"[models.{model}.aliases.{_key(alias)}]"]
            lines += [f"{k} = {_value(v)}" for k, v in target.model_dump(exclude_none=True).items()]
    return "\n".join(lines) + "\n"


def _key(name: str) -> str:
    return name if name.replace("-", "").replace("_", "").isalnum() else json.dumps(name)


def _value(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


class RoutesFile:
    def __init__(self, path: Path, functions: Iterable[NamedSpec]) -> None:
        self.path = path
        self.functions = list(functions)
        self.history = path.with_name(path.name + ".history")

    def load(self) -> RoutesConfig:
        return load_routes(self.path)

    def write(self, config: RoutesConfig) -> RouteTable:
        """Validate, keep the current file in the history, write the new one atomically."""
        table = RouteTable.build(self.functions, config)  # raises SpecError: nothing is written
        text = dump_routes(config)
        assert RoutesConfig.model_validate(tomllib.loads(text)) == config  # the dump round-trips
        self.history.mkdir(parents=True, exist_ok=True)
        n = len(list(self.history.iterdir()))
        if self.path.exists():
            shutil.copy2(self.path, self.history / f"{n:05d}.toml")
        else:  # the first change: rolling it back removes the file (the defaults again)
            (self.history / f"{n:05d}.absent").touch()
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)
        return table

    def set_alias(self, model: str, alias: str, targets: list[str]) -> RouteTable:
        """targets: ["2"] (one version or alias) or ["1=90", "2=10"] (a split)."""
        config = self.load()
        if len(targets) == 1 and "=" not in targets[0]:
            new = Alias(version=targets[0])
        else:
            split: dict[str, int] = {}
            for t in targets:
                version, sep, weight = t.partition("=")
                if not sep or not weight.isdigit():
                    raise SpecError(f"{t!r}: write a split as VERSION=WEIGHT, e.g. 1=90 2=10")
                split[version] = int(weight)
            old = config.models.get(model)
            shadow = old.aliases[alias].shadow if old and alias in old.aliases else None
            new = _alias(split=split, shadow=shadow)
        return self.write(_with_alias(config, model, alias, new))

    def set_shadow(self, model: str, alias: str, version: str | None, percent: float) -> RouteTable:
        config = self.load()
        current = config.models.get(model)
        if current is None or alias not in current.aliases:
            raise SpecError(
                f"model {model!r} has no alias {alias!r} in {self.path}; create it with `slserve route set`"
            )
        target = current.aliases[alias]
        shadow = Shadow(version=version, percent=percent) if version else None
        new = _alias(version=target.version, split=target.split, shadow=shadow)
        return self.write(_with_alias(config, model, alias, new))

    def promote(self, model: str, alias: str) -> tuple[RouteTable, str]:
        """A split alias (a canary) becomes 100% its newest version."""
        config = self.load()
        current = config.models.get(model)
        target = current.aliases.get(alias) if current else None
        if target is None or target.split is None:
            raise SpecError(f"{model}: alias {alias!r} is not a split; promote takes a canary like 1=90 2=10")
        newest = max(target.split, key=version_order)
        return self.write(_with_alias(config, model, alias, _alias(version=newest))), newest

    def rollback(self) -> RouteTable:
        """Put back the routes file as it was before the last change (no file at all, before the first)."""
        backups = sorted(self.history.iterdir()) if self.history.exists() else []
        if not backups:
            raise SpecError(f"no earlier routes to roll back to ({self.history} is empty)")
        previous = backups[-1]
        if previous.suffix == ".absent":
            table = RouteTable.build(self.functions, RoutesConfig())
            self.path.unlink(missing_ok=True)
            previous.unlink()
            return table
        table = RouteTable.build(self.functions, load_routes(previous))
        os.replace(previous, self.path)
        return table


def _alias(**fields: Any) -> Alias:
    try:
        return Alias(**fields)
    except ValidationError as e:
        raise SpecError("; ".join(str(err["msg"]).removeprefix("Value error, ") for err in e.errors())) from None


def _with_alias(config: RoutesConfig, model: str, alias: str, new: Alias) -> RoutesConfig:
    models = dict(config.models)
    current = models.get(model)
    aliases = dict(current.aliases) if current else {}
    aliases[alias] = new
    models[model] = (current or ModelRoutes()).model_copy(update={"aliases": aliases})
    return config.model_copy(update={"models": models})
