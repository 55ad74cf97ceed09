"""Throughput with metering on (every request's ledger record durable before its response: SQLite WAL,
synchronous=FULL, group commit) against metering off, side by side in one run. Target: on >= 0.9x off.

Two gateways over the same functions, one with the ledger and one without, measured in alternation (wrk,
c=32, one thread; the idle one costs nothing), several rounds, best round each. `classifier` is the worst
case (a tiny model: the ledger's share of each request is largest), `minilm-onnx` a real one.

    python benchmarks/metering.py [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import urllib.request
from pathlib import Path

from harness import OUT, Gateway, gateway, machine, make_functions, save
from throughput import LUA, wrk

FUNCTIONS = {
    "classifier": ("classifier", {"scaling": {"max_instances": 2, "target_concurrency": 16}}),
    "minilm-onnx": ("minilm-onnx", {"scaling": {"max_instances": 2, "target_concurrency": 16}}),
}
BODIES = {
    "classifier": '{"inputs":[{"name":"features","datatype":"FP32","shape":[1,4],"data":[0.1,0.2,0.3,0.4]}]}',
    "minilm-onnx": '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["metered, exactly once"]}]}',
}


def ledger_stats(gw: Gateway) -> dict[str, float]:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(("slserve_ledger_records_total", "slserve_ledger_commits_total")):
            name, value = line.split()
            out[name] = float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    functions = make_functions(OUT / "functions-metering", FUNCTIONS)
    results: dict[str, dict[str, list[float]]] = {name: {"on": [], "off": []} for name in FUNCTIONS}
    with gateway(functions, metering=True) as on, gateway(functions, metering=False) as off:
        scripts: dict[tuple[str, str], Path] = {}
        for mode, gw in (("on", on), ("off", off)):
            for name in FUNCTIONS:
                script = OUT / f"metering-{mode}-{name}.lua"
                script.write_text(LUA.format(body=BODIES[name], key=gw.key))
                scripts[mode, name] = script
                wrk(f"{gw.url}/v2/models/{name}/infer", 32, 2, script)  # instances up, caches warm
        for _ in range(args.rounds):
            for name in FUNCTIONS:
                for mode, gw in (("on", on), ("off", off)):
                    point = wrk(f"{gw.url}/v2/models/{name}/infer", 32, args.seconds, scripts[mode, name])
                    assert point["errors"] == 0, point
                    results[name][mode].append(point["rps"])
                    print(name, mode, point, file=sys.stderr)
        stats = ledger_stats(on)
    save("metering", {"results": results, "ledger": stats})
    # Each round measures on and off back to back: the median of those paired ratios resists the machine's drift.
    print("| function | off (req/s, best) | on (req/s, best) | best on / best off | median paired on / off |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        best_off, best_on = max(r["off"]), max(r["on"])
        paired = statistics.median(on / off for on, off in zip(r["on"], r["off"], strict=True))
        print(f"| {name} | {best_off:.0f} | {best_on:.0f} | {best_on / best_off:.2f}x | {paired:.2f}x |")
    records = stats.get("slserve_ledger_records_total", 0.0)
    commits = stats.get("slserve_ledger_commits_total", 1.0)
    print(
        f"\nLedger: {records:.0f} records in {commits:.0f} commits ({records / max(commits, 1):.1f} per fsync). "
        f"Machine: {machine()}. wrk -t1 -c32, {args.seconds:.0f} s per point, {args.rounds} rounds."
    )
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
