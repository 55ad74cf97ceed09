"""`slserve usage`: a tenant's requests and charges for a month, from the ledger."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from slserve.cli.common import (
    AsJson,
    StateDir,
    console,
)
from slserve.settings import DEFAULT_STATE
from slserve.terminal import print_table


def usage(
    tenant: Annotated[str, typer.Option(help="Whose usage")],
    month: Annotated[str | None, typer.Option(help="YYYY-MM (default this month, UTC)")] = None,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="CSV (one row per model, version and tier, then TOTAL)")
    ] = False,
    state: StateDir = DEFAULT_STATE,
    as_json: AsJson = False,
) -> None:
    """A tenant's requests and charges for a month, per model, version and tier (exact, from the ledger)."""
    from slserve.metering import usage as reports
    from slserve.metering.ledger import SQLiteLedger
    from slserve.settings import load_settings

    name, start, end = reports.month_span(month)
    ledger = SQLiteLedger(state / "ledger.sqlite")
    try:
        doc = reports.report(ledger.usage(start, end, tenant=tenant), name, load_settings().currency, tenant=tenant)
    finally:
        asyncio.run(ledger.close())
    if as_csv:
        print(reports.to_csv(doc), end="")
        return
    if as_json:
        console.print_json(data=doc)
        return
    columns = ("model", "version", "tier", "requests", "failed", "abandoned", "tokens", "charged", "compute cost")
    table = Table(*columns, box=box.SIMPLE_HEAD)
    for row in doc["usage"]:
        counts = (row["requests"], row["failed"], row["abandoned"], row["tokens"])
        money = (row["charged"], row["compute_cost"])
        table.add_row(row["model"], row["version"], row["tier"], *map(str, counts), *money)
        for step in row.get("steps", []):  # a pipeline's charge, itemized: its steps sum to it
            where = f"  {step['step']}: {step['model']}"
            table.add_row(where, step["version"], step["tier"], str(step["requests"]), "", "", "", step["charged"])
    total = doc["total"]
    totals = (str(total["requests"]), str(total["failed"]), str(total["abandoned"]))
    table.add_row("total", "", "", *totals, "", total["charged"], total["compute_cost"], style="bold")
    console.print(f"usage of tenant {tenant!r} in {name} ({doc['currency']})")
    print_table(console, table)
