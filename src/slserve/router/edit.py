"""Editing routes.toml from the CLI: every change is validated against the functions before it is written
(atomically), the file before it is kept, so `rollback` can put it back, and only the alias a change is about
is rewritten: the operator's comments, order and other tables stay as they were (tomlkit)."""

from __future__ import annotations

import os
import shutil
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import ValidationError
from tomlkit.items import Table

from slserve.errors import SpecError
from slserve.router.config import Alias, RoutesConfig, Shadow, load_routes
from slserve.router.table import RouteTable
from slserve.spec import NamedSpec, version_order

HEADER = "slserve routes: versions, aliases and tiers. Edited by `slserve route ...`; reloaded live."


class RoutesFile:
    def __init__(self, path: Path, functions: Iterable[NamedSpec]) -> None:
        self.path = path
        self.functions = list(functions)
        self.history = path.with_name(path.name + ".history")

    def load(self) -> RoutesConfig:
        return load_routes(self.path)

    def write_alias(self, model: str, alias: str, new: Alias) -> RouteTable:
        """Set one alias in the file as it is (its other tables and comments untouched); validate, keep the
        current file in the history, write the new one atomically."""
        doc = tomlkit.parse(self.path.read_text()) if self.path.exists() else tomlkit.document()
        if not self.path.exists():
            doc.add(tomlkit.comment(HEADER))
        aliases = _table(_table(_table(doc, "models"), model), "aliases")
        aliases[alias] = _alias_table(new)
        text = tomlkit.dumps(doc)
        try:
            config = RoutesConfig.model_validate(tomllib.loads(text))
        except ValidationError as e:
            raise SpecError("; ".join(str(err["msg"]).removeprefix("Value error, ") for err in e.errors())) from None
        table = RouteTable.build(self.functions, config)  # raises SpecError: nothing is written
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
        return self.write_alias(model, alias, new)

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
        return self.write_alias(model, alias, new)

    def promote(self, model: str, alias: str) -> tuple[RouteTable, str]:
        """A split alias (a canary) becomes 100% its newest version."""
        config = self.load()
        current = config.models.get(model)
        target = current.aliases.get(alias) if current else None
        if target is None or target.split is None:
            raise SpecError(f"{model}: alias {alias!r} is not a split; promote takes a canary like 1=90 2=10")
        newest = max(target.split, key=version_order)
        return self.write_alias(model, alias, _alias(version=newest)), newest

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


def _table(parent: Any, key: str) -> Table:
    """`parent[key]`, made a table of its own header's children ([models.x.aliases.y]) when it is new."""
    if key not in parent:
        parent[key] = tomlkit.table(is_super_table=True)
    found = parent[key]
    assert isinstance(found, Table)
    return found


def _alias_table(alias: Alias) -> Table:
    table = tomlkit.table()
    for key, value in alias.model_dump(exclude_none=True).items():
        if isinstance(value, dict):
            inline = tomlkit.inline_table()
            inline.update(value)
            table[key] = inline
        else:
            table[key] = value
    return table
