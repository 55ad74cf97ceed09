"""`GET /dashboard` (a page with no data of its own, no build step and nothing fetched from elsewhere) and
`GET /slserve/overview` (admin): everything the page shows, as JSON, which `slserve dashboard --json` prints too."""

from __future__ import annotations

import time
from importlib.resources import files
from typing import Any

from slserve.metering import usage
from slserve.metering.records import Ledger
from slserve.platform.base import Platform
from slserve.platform.timeline import Timelines
from slserve.serving import Runner

PAGE = files("slserve.gateway").joinpath("dashboard.html").read_bytes()
MONEY_TTL_S = 5.0  # the month's sums are a query over the ledger: shared by every poll within this time


class Overview:
    def __init__(
        self, platform: Platform, runner: Runner, timeline: Timelines, ledger: Ledger | None, currency: str
    ) -> None:
        self.platform = platform
        self.runner = runner
        self.timeline = timeline
        self.ledger = ledger
        self.currency = currency
        self._money: tuple[float, dict[str, Any]] | None = None

    async def document(self) -> dict[str, Any]:
        await self.platform.catch_up()
        return {
            "time": time.time(),
            "functions": [s.to_dict() for s in self.platform.status()],
            "host": self.platform.host(),
            **await self.timeline.view(),  # recent and timeline
            "routes": self.runner.describe_routes(),
            "drift": [d.to_dict() for d in self.runner.monitor.report()] if self.runner.monitor else [],
            "money": self.money(),
        }

    def money(self) -> dict[str, Any]:
        """Charges this month (UTC), per tier and per tenant, from the ledger."""
        now = time.monotonic()
        if self._money is not None and now - self._money[0] < MONEY_TTL_S:
            return self._money[1]
        month, start, end = usage.month_span(None)
        rows = self.ledger.spend(start, end) if self.ledger else []
        tiers: dict[str, list[int]] = {}
        tenants: dict[str, list[int]] = {}
        for row in rows:
            for totals, name in ((tiers, row.tier), (tenants, row.tenant)):
                total = totals.setdefault(name, [0, 0])
                total[0] += row.requests
                total[1] += row.charged

        def listed(totals: dict[str, list[int]], label: str) -> list[dict[str, Any]]:
            return [
                {label: name, "requests": n, "charged": usage.money(charged), "charged_micros": charged}
                for name, (n, charged) in sorted(totals.items())
            ]

        charged = sum(row.charged for row in rows)
        doc = {
            "month": month,
            "currency": self.currency,
            "by_tier": listed(tiers, "tier"),
            "by_tenant": listed(tenants, "tenant"),
            "total": {
                "requests": sum(row.requests for row in rows),
                "charged": usage.money(charged),
                "charged_micros": charged,
            },
        }
        self._money = (now, doc)
        return doc
