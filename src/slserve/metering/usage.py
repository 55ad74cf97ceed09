"""Usage reports from the ledger: totals per model, version and tier for a month, exact in integer micro-units.
Money is never a float: prices are summed as integers and printed by integer division."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import time
from typing import Any

from slserve.accounts.limits import month_bounds
from slserve.errors import InvalidInput
from slserve.metering.records import StepUsage, UsageRow

MICROS = 1_000_000


def month_span(month: str | None) -> tuple[str, float, float]:
    """'2026-11' (None: this month, UTC) -> (the month's name, start, end) in unix seconds."""
    if month is None:
        start, end = month_bounds(time.time())
        return dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y-%m"), start, end
    match = re.fullmatch(r"(\d{4})-(\d{2})", month)
    if not match or not 1970 <= int(match[1]) <= 9998 or not 1 <= int(match[2]) <= 12:
        raise InvalidInput(f"month {month!r} must look like 2026-11 (a year from 1970 to 9998)")
    start = dt.datetime(int(match[1]), int(match[2]), 1, tzinfo=dt.UTC).timestamp()
    return month, *month_bounds(start)


def money(micros: int) -> str:
    """123456 -> '0.123456' (exact; no float ever holds an amount)."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS)
    return f"{sign}{whole}.{frac:06d}"


def step_line(step: StepUsage) -> dict[str, Any]:
    return {
        "step": step.step,
        "model": step.model,
        "version": step.version,
        "tier": step.tier,
        "requests": step.requests,
        "compute_ms": round(step.compute_ms, 3),
        "charged_micros": step.charged,
        "charged": money(step.charged),
    }


def report(rows: list[UsageRow], month: str, currency: str, **who: str) -> dict[str, Any]:
    lines = [
        {
            "model": r.model,
            "version": r.version,
            "tier": r.tier,
            "requests": r.requests,
            "failed": r.failed,
            "abandoned": r.abandoned,
            "tokens": r.tokens,
            "compute_ms": round(r.compute_ms, 3),
            "charged_micros": r.charged,
            "charged": money(r.charged),
            "compute_cost_micros": r.compute_cost,
            "compute_cost": money(r.compute_cost),
            **({"steps": [step_line(s) for s in r.steps]} if r.steps else {}),
        }
        for r in rows
    ]
    total = sum(r.charged for r in rows)
    return {
        **who,
        "month": month,
        "currency": currency,
        "usage": lines,
        "total": {
            "requests": sum(r.requests for r in rows),
            "failed": sum(r.failed for r in rows),
            "abandoned": sum(r.abandoned for r in rows),
            "charged_micros": total,
            "charged": money(total),
            "compute_cost_micros": sum(r.compute_cost for r in rows),
            "compute_cost": money(sum(r.compute_cost for r in rows)),
        },
    }


def to_csv(doc: dict[str, Any]) -> str:
    out = io.StringIO()
    columns = [
        *("model", "version", "tier", "requests", "failed", "tokens", "compute_ms", "charged_micros", "charged"),
        *("abandoned", "compute_cost_micros"),
    ]
    writer = csv.DictWriter(out, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(doc["usage"])
    total = doc["total"]
    totals = ("requests", "failed", "charged_micros", "charged", "abandoned", "compute_cost_micros")
    writer.writerow({"model": "TOTAL", **{k: total[k] for k in totals}})
    return out.getvalue()
