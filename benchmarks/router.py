"""The router's cost per request, and what a million minilm requests cost in each tier.

- in-process: `RouteTable.resolve` for a pinned version, an alias, a sticky 90/10 canary (timeit);
- end to end: the same classifier function reached by its own name (a one-candidate route) and through a
  canary alias of its model, interleaved at concurrency 1 (aiohttp, one connection);
- cost per million: the price of each tier's minilm function from its measured compute time (median of
  `x-slserve-compute-ms` over 300 requests) and the default tier prices.

    python benchmarks/router.py
"""

from __future__ import annotations

import asyncio
import statistics
import timeit

import orjson

from harness import OUT, ROOT, gateway, machine, make_functions, pct, save
from slserve.router import RoutesConfig, RouteTable, pricing
from slserve.router.config import DEFAULT_TIERS
from slserve.spec import Pricing, discover_functions
from warm_overhead import sequential


def in_process() -> dict[str, float]:
    functions = discover_functions(ROOT / "functions")
    minilm = next(f for f in functions if f.name == "minilm-torch")
    v2 = minilm.spec.model_copy(update={"model": minilm.spec.model.model_copy(update={"version": "2"})})
    functions.append(minilm.model_copy(update={"name": "minilm-v2", "spec": v2}))  # a second version to split over
    config = RoutesConfig.model_validate(
        {"models": {"minilm": {"aliases": {"stable": {"version": "1"}, "canary": {"split": {"1": 90, "2": 10}}}}}}
    )
    table = RouteTable.build(functions, config)
    cases = {
        "pinned version": lambda: table.resolve("minilm", "1", "key-1", "standard"),
        "alias": lambda: table.resolve("minilm", "stable", "key-1", "standard"),
        "sticky canary + tier fallback list": lambda: table.resolve("minilm", "canary", "key-1", "standard"),
    }
    out = {}
    for name, call in cases.items():
        n = 200_000
        out[name] = min(timeit.repeat(call, number=n, repeat=3)) / n * 1e6
    return out


# minilm-fp16 names a GPU; on a host without one it runs on the CPU, which is what this table then prices.
TIER_FUNCTIONS = {"economy": "minilm-int8", "standard": "minilm", "premium": "minilm-fp16"}


def main() -> None:
    results: dict[str, object] = {"in_process_us": in_process()}
    functions = make_functions(
        OUT / "functions-router",
        {
            "clf": ("classifier", {}),
            "minilm": ("minilm-torch", {}),
            "minilm-int8": ("minilm-int8", {}),
            "minilm-fp16": ("minilm-fp16", {}),
        },
    )
    routes = OUT / "routes-bench.toml"
    routes.write_text(
        '[models.classifier.aliases.canary]\nsplit = { "1" = 100 }\n\n[models.minilm.aliases.stable]\nversion = "1"\n'
    )
    body = orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    text = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["The quick fox."]}]})
    with gateway(functions, routes=routes) as gw:
        direct, routed = [], []
        for _ in range(4):
            d, _ = asyncio.run(sequential(f"{gw.url}/v2/models/clf/infer", body, 500, gw.auth))
            r, _ = asyncio.run(sequential(f"{gw.url}/v2/models/classifier/versions/canary/infer", body, 500, gw.auth))
            direct += d
            routed += r
        results["e2e_ms"] = {
            "direct p50": pct(direct, 50),
            "routed p50": pct(routed, 50),
            "direct p99": pct(direct, 99),
            "routed p99": pct(routed, 99),
        }
        compute = {}
        for tier, function in TIER_FUNCTIONS.items():
            _, c = asyncio.run(sequential(f"{gw.url}/v2/models/{function}/infer", text, 300, gw.auth))
            compute[tier] = statistics.median(c)
        results["compute_ms"] = compute
    save("router", results)
    ip = results["in_process_us"]
    e2e = results["e2e_ms"]
    print(f"\nMachine: {machine()}.\n")
    print("| route resolution (in-process) | µs per request |")
    print("| --- | ---: |")
    for name, us in ip.items():  # type: ignore[union-attr]
        print(f"| {name} | {us:.1f} |")
    print(
        f"\nEnd to end, classifier at concurrency 1 (4 x 500 requests interleaved): by function name p50 "
        f"{e2e['direct p50']:.3f} ms, through a canary alias p50 {e2e['routed p50']:.3f} ms "  # type: ignore[index]
        f"(difference {1000 * (e2e['routed p50'] - e2e['direct p50']):.0f} µs).\n"
    )  # type: ignore[index]
    print(
        "| tier | minilm function | compute p50 (ms) | price per request (micro-units) | per million requests (units) |"
    )
    print("| --- | --- | ---: | ---: | ---: |")
    for tier, ms in compute.items():
        t = DEFAULT_TIERS[tier]
        price = pricing.price(t, Pricing(), rows=8, tokens=None)  # the benchmark's 8 sentences, priced per row
        print(
            f"| {tier} | {TIER_FUNCTIONS[tier]} | {ms:.1f} | {price} | {price:,} |"
        )  # price x 1e6 requests / 1e6 micro


if __name__ == "__main__":
    main()
