"""Prices by the work a request asks for, never by the compute it happened to take; cost recorded beside."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from slserve.errors import SpecError
from slserve.metering.ledger import SQLiteLedger
from slserve.router.config import Costs, Tier, load_routes
from slserve.router.pricing import compute_cost, price, published, work
from slserve.spec import Pricing

STANDARD = Tier(rank=1, price_per_request=20, price_per_unit=10)


def test_a_price_counts_rows_or_thousands_of_tokens_times_the_weight() -> None:
    assert price(STANDARD, Pricing(), rows=3, tokens=None) == 20 + 30
    assert price(STANDARD, Pricing(weight=0.1), rows=3, tokens=None) == 20 + 3  # 0.1 x 3 x 10 is 3, not 4
    assert price(STANDARD, Pricing(weight=0.25), rows=1, tokens=None) == 20 + 3  # 2.5 rounds up
    tokens = Pricing(per="1k-tokens", weight=10)
    assert work(tokens, rows=8, tokens=1500) == 15.0
    assert price(STANDARD, tokens, rows=8, tokens=1500) == 20 + 150
    assert price(STANDARD, tokens, rows=8, tokens=None) == 20  # no tokens counted: the request's price alone


def test_the_published_formula_is_the_one_charged() -> None:
    doc = published("standard", STANDARD, Pricing(weight=4))
    assert doc == {
        "tier": "standard",
        "currency": "micro-units",
        "per_request": 20,
        "per_unit": 10,
        "unit": "row",
        "weight": 4.0,
        "formula": "per_request + ceil(4 x rows x per_unit)",
    }


def test_compute_cost_is_by_device() -> None:
    costs = Costs(cpu_ms=1, gpu_ms=8)
    assert compute_cost(costs, 2.2, "cpu") == 3
    assert compute_cost(costs, 2.2, "cuda") == 18
    assert compute_cost(costs, 2.2, None) == 3


def test_routes_with_a_price_per_compute_ms_say_what_to_write_instead(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text("[tiers.economy]\nrank = 0\nprice_per_request = 10\nprice_per_compute_ms = 1\n")
    with pytest.raises(SpecError, match=r"price_per_compute_ms is gone.*set price_per_unit"):
        load_routes(routes)


def test_a_ledger_from_before_gains_the_compute_cost_column(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as db:  # the records table as it was
        db.execute(
            "CREATE TABLE records (request_id TEXT PRIMARY KEY, time_us INTEGER NOT NULL, key_id TEXT NOT NULL,"
            " tenant TEXT NOT NULL, endpoint TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, alias TEXT,"
            " tier TEXT NOT NULL, function TEXT NOT NULL, instance TEXT, cold_start INTEGER NOT NULL,"
            " cold_start_ms REAL, queue_ms REAL, compute_ms REAL, input_bytes INTEGER NOT NULL,"
            " output_bytes INTEGER NOT NULL, batch_size INTEGER, tokens INTEGER, status INTEGER NOT NULL,"
            " price INTEGER NOT NULL CHECK (price >= 0), fallback TEXT, steps TEXT) WITHOUT ROWID"
        )
        db.execute(
            "INSERT INTO records VALUES ('old', 1, 'k', 't', 'v2', 'm', '1', NULL, 'standard', 'f', NULL, 0, NULL,"
            " 0.1, 2.0, 10, 10, 1, NULL, 200, 42, NULL, NULL)"
        )
    ledger = SQLiteLedger(path)
    (row,) = ledger.usage(0, 10)
    assert (row.charged, row.compute_cost) == (42, 0)
    columns = {r[1] for r in ledger.db.execute("PRAGMA table_info(records)")}
    assert "compute_cost" in columns
