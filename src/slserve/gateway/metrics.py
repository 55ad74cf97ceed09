"""Prometheus metrics (`GET /metrics`). Per-request counters and histograms are updated as requests finish;
everything that is state (instances, queues, cold starts, the ledger, shadows, routes) is read at scrape time
from its owner, so no number is kept twice.

With several front workers (`--workers N`) a scrape reaches one front, whichever the kernel picks, so the
per-request counters are the host's: each front keeps them in prometheus_client's multiprocess files (the
supervisor sets PROMETHEUS_MULTIPROC_DIR before the fronts import it), and any front's scrape adds up every
front's, those of fronts that died included (a counter never goes back)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from slserve.drift.monitor import DriftMonitor
from slserve.metering.records import Ledger
from slserve.platform.base import Platform
from slserve.serving import Runner

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SHARED_FOLDER = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable


class _Families(Collector):
    """Metric families already collected, to render."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self.families


class Metrics:
    def __init__(self, platform: Platform, runner: Runner, ledger: Ledger | None) -> None:
        self.platform = platform
        self.registry = CollectorRegistry(auto_describe=False)
        labels = ["endpoint", "model", "version", "alias", "tier", "status"]
        self.requests = Counter("slserve_requests", "Inference requests answered", labels, registry=self.registry)
        self.latency = Histogram(
            "slserve_request_duration_seconds",
            "Inference request latency in the gateway (body read to response)",
            ["endpoint", "model", "tier"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cold_start = Histogram(
            "slserve_cold_start_duration_seconds",
            "How long requests that waited for an instance start waited",
            ["function"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "slserve_batch_size", "Requests per model call", ["function"], buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.money = CollectorRegistry(auto_describe=False)  # shown to admin keys only
        self.charged = Counter(
            "slserve_charged_micros",
            "Money charged, in micro-units of currency",
            ["model", "tier"],
            registry=self.money,
        )
        self.fallbacks = Counter(
            "slserve_fallbacks", "Requests served by a fallback function", ["model", "tier"], registry=self.registry
        )
        state = StateCollector(platform, runner, ledger)
        self.registry.register(state)
        folder = os.environ.get(SHARED_FOLDER)
        self._shared = MultiProcessCollector(None, folder) if folder else None  # type: ignore[no-untyped-call]
        self._state = state
        # A labelled child is looked up (lock, label checks) on every `labels()` call; a request's labels repeat,
        # so each combination is looked up once. Bounded by the models, versions, tiers and statuses served.
        self._answered: dict[tuple[str, ...], tuple[Counter, Histogram]] = {}
        self._batches: dict[str, Histogram] = {}

    def answered(
        self, endpoint: str, model: str, version: str, alias: str, tier: str, status: int, seconds: float
    ) -> None:
        labels = (endpoint, model, version, alias, tier, str(status))
        children = self._answered.get(labels)
        if children is None:
            children = self.requests.labels(*labels), self.latency.labels(endpoint, model, tier)
            self._answered[labels] = children
        children[0].inc()
        children[1].observe(seconds)

    def batch(self, function: str, size: int) -> None:
        child = self._batches.get(function)
        if child is None:
            child = self._batches[function] = self.batch_size.labels(function)
        child.observe(size)

    async def render(self, money: bool = False) -> bytes:
        await self.platform.catch_up()  # instances and queues as they are now, wherever they are kept
        if self._shared is None:
            text = generate_latest(self.registry)
            return text + generate_latest(self.money) if money else text
        shared = list(self._shared.collect())  # type: ignore[no-untyped-call]  # every front's counters
        money_names = {m.name for m in self.money.collect()}
        text = generate_latest(_Families(m for m in shared if m.name not in money_names))
        text += generate_latest(self._state)
        return text + generate_latest(_Families(m for m in shared if m.name in money_names)) if money else text


class StateCollector(Collector):
    def __init__(self, platform: Platform, runner: Runner, ledger: Ledger | None) -> None:
        self.platform = platform
        self.router = runner.router
        self.shadows = runner.shadows
        self.ledger = ledger
        self.monitor = runner.monitor

    def collect(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily("slserve_queue_depth", "Requests waiting for an instance", labels=["function"])
        in_flight = GaugeMetricFamily("slserve_in_flight", "Requests on instances", labels=["function"])
        instances = GaugeMetricFamily("slserve_instances", "Instances by state", labels=["function", "state"])
        cold = CounterMetricFamily("slserve_cold_starts", "Instances started", labels=["function"])
        served = CounterMetricFamily("slserve_function_requests", "Requests by outcome", labels=["function", "outcome"])
        for s in self.platform.status():
            queued.add_metric([s.name], s.queued)
            in_flight.add_metric([s.name], s.in_flight)
            states: dict[str, int] = {"starting": 0, "idle": 0, "busy": 0, "draining": 0}
            for inst in s.instances:
                state = inst.state
                states[state] = states.get(state, 0) + 1
            for state, n in states.items():
                instances.add_metric([s.name, state], n)
            cold.add_metric([s.name], s.cold_starts)
            served.add_metric([s.name, "served"], s.served)
            served.add_metric([s.name, "failed"], s.failed)
        yield from (queued, in_flight, instances, cold, served)
        yield from self._shadows()
        if self.monitor is not None:
            yield from self._drift(self.monitor)
        routes_error = GaugeMetricFamily("slserve_routes_refused", "1 while a changed routes file is refused")
        routes_error.add_metric([], 1 if self.router.error else 0)
        yield routes_error
        if self.ledger is not None:
            stats = self.ledger.stats()
            yield GaugeMetricFamily("slserve_ledger_pending", "Records waiting for commit", value=stats["pending"])
            yield GaugeMetricFamily(
                "slserve_ledger_lag_seconds", "Enqueue-to-durable time of the last commit", value=stats["last_lag_s"]
            )
            yield GaugeMetricFamily(
                "slserve_ledger_group_size", "Records in the last commit", value=stats["last_group"]
            )
            yield CounterMetricFamily("slserve_ledger_records", "Records made durable", value=stats["records"])
            yield CounterMetricFamily("slserve_ledger_commits", "Group commits", value=stats["commits"])

    def _drift(self, monitor: DriftMonitor) -> Iterator[Metric]:
        version = ["model", "version"]
        score = GaugeMetricFamily(
            "slserve_drift_score", "Drift from the reference (see measure)", labels=[*version, "tensor", "measure"]
        )
        threshold = GaugeMetricFamily(
            "slserve_drift_threshold", "Where the score counts as drift", labels=[*version, "tensor", "measure"]
        )
        rows = GaugeMetricFamily("slserve_drift_window_rows", "Rows in the live drift window", labels=version)
        drifting = GaugeMetricFamily("slserve_drifting", "1 while a score is past its threshold", labels=version)
        for d in monitor.report():
            rows.add_metric([d.model, d.version], d.rows)
            drifting.add_metric([d.model, d.version], 1 if d.drifting else 0)
            for s in d.scores:
                score.add_metric([d.model, d.version, s.tensor, s.measure], s.value)
                threshold.add_metric([d.model, d.version, s.tensor, s.measure], s.threshold)
        yield from (score, threshold, rows, drifting)

    def _shadows(self) -> Iterator[Metric]:
        labels = ["model", "alias", "shadow_version"]
        requests = CounterMetricFamily("slserve_shadow_requests", "Shadow requests compared", labels=labels)
        failures = CounterMetricFamily("slserve_shadow_failures", "Shadow requests that failed", labels=labels)
        gauges = {
            "max_abs_diff": GaugeMetricFamily(
                "slserve_shadow_max_abs_diff", "Largest |primary - shadow|", labels=labels
            ),
            "mean_cosine": GaugeMetricFamily("slserve_shadow_mean_cosine", "Mean row cosine", labels=labels),
            "min_cosine": GaugeMetricFamily("slserve_shadow_min_cosine", "Smallest row cosine", labels=labels),
            "argmax_agreement": GaugeMetricFamily(
                "slserve_shadow_argmax_agreement", "Share of rows with the same argmax", labels=labels
            ),
        }
        for (model, alias, version), stats in list(self.shadows.stats.items()):
            values = stats.to_dict()
            requests.add_metric([model, alias, version], stats.requests)
            failures.add_metric([model, alias, version], stats.failures)
            for name, family in gauges.items():
                value = values[name]
                if value is not None:
                    family.add_metric([model, alias, version], float(value))
        yield requests
        yield failures
        yield from gauges.values()
