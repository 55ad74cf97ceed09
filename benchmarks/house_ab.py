"""A warm function, two source trees side by side (issue 25: a redesign must leave speed where it was): the lone
request's p50 and p99 and requests per second at 16 and 32 in flight (`lone_request.measure`) on MiniLM (torch),
a fresh gateway per round, the trees alternating. Bounded, loopback only.

    python benchmarks/house_ab.py BEFORE_TREE AFTER_TREE [--rounds 2] [--requests 300] [--seconds 5]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics

from harness import OUT, gateway, machine, make_functions, save
from lone_request import measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    trees = {"before": args.before, "after": args.after}
    functions = make_functions(OUT / "functions-house-ab", {"minilm": ("minilm-torch", {})})
    results: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in range(args.rounds):
        for name, tree in trees.items():
            os.environ["PYTHONPATH"] = f"{tree}/src:{tree}/samples"  # the gateway's process runs this tree
            with gateway(functions, metering=True) as gw:
                measured = measure(f"{gw.url}/v2/models/minilm/infer", gw.auth, args.requests, args.seconds)
            for what, value in measured.items():
                results[name][what].append(value)
            print(f"{name} round {r}: " + ", ".join(f"{k} {v:.2f}" for k, v in measured.items()), flush=True)
    print(f"machine: {machine()}")
    print("| | before | after | after vs before |\n| --- | ---: | ---: | ---: |")
    for what in results["before"]:
        before, after = (statistics.median(results[n][what]) for n in ("before", "after"))
        better = after / before if "requests/s" in what else before / after  # > 1: after is better
        print(f"| {what} | {before:.2f} | {after:.2f} | {better:.2f}x {'better' if better >= 1 else 'worse'} |")
    save("house_ab", {n: dict(v) for n, v in results.items()})


if __name__ == "__main__":
    main()
