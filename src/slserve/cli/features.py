"""`slserve features`: the feature tables pipelines look up."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from slserve.cli.common import (
    AsJson,
    StateDir,
    console,
)
from slserve.errors import SlserveError
from slserve.settings import DEFAULT_STATE
from slserve.terminal import print_table

app = typer.Typer(no_args_is_help=True, help="Feature tables for pipelines' lookups: load, list")


@app.command("load")
def features_load(
    table: Annotated[str, typer.Argument(help="Table name (a pipeline's lookup = ...)")],
    file: Annotated[Path, typer.Argument(help="A .parquet or .csv file: one key column, numeric feature columns")],
    key: Annotated[str | None, typer.Option(help="The key column (default: the first)")] = None,
    state: StateDir = DEFAULT_STATE,
) -> None:
    """Replace TABLE with FILE's rows (in one transaction; a running gateway sees them within its cache's TTL)."""
    from slserve.features import SQLiteFeatureStore
    from slserve.features.load import load_table

    if not file.is_file():
        raise SlserveError(f"{file}: no such file")
    store = SQLiteFeatureStore(state / "features.sqlite")
    try:
        loaded = load_table(store, table, file, key)
    finally:
        store.close()
    console.print(f"{table}: {loaded.rows} rows of {len(loaded.columns)} features ({', '.join(loaded.columns)})")


@app.command("list")
def features_list(state: StateDir = DEFAULT_STATE, as_json: AsJson = False) -> None:
    """The feature tables loaded: rows, width, columns, when and from where."""
    from slserve.features import SQLiteFeatureStore

    store = SQLiteFeatureStore(state / "features.sqlite")
    try:
        tables = store.tables()
    finally:
        store.close()
    if as_json:
        console.print_json(data=[vars(t) for t in tables])
        return
    out = Table("table", "rows", "width", "columns", "loaded", "from", box=box.SIMPLE_HEAD)
    for t in tables:
        loaded = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.loaded_at))
        out.add_row(t.name, str(t.rows), str(t.width), ", ".join(t.columns), loaded, t.source)
    print_table(console, out)
