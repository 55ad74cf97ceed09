"""Throughput on minilm at concurrency 1, 8, 32, 64, with and without dynamic batching, against the model's own
batched throughput in-process (the ceiling). Load generator: wrk (C, epoll; one thread) with a Lua script that
POSTs one v2 JSON request, so the client costs little of the 2 cores. Run: `make bench`.

    python benchmarks/throughput.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from harness import ARTIFACTS, OUT, gateway, machine, make_functions, save

TEXT = "The quick brown fox jumps over the lazy dog."
BODY = '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["' + TEXT + '"]}]}'
FUNCTIONS = {
    "minilm": ("minilm-torch", {}),  # the sample as shipped: batching 32 / 8 ms, up to 2 instances
    "minilm-nobatch": ("minilm-torch", {"batching": {"max_batch_size": 1, "max_delay_ms": 0}}),
}
CONCURRENCY = [1, 8, 32, 64]
NO_LEDGER = "minilm, metering off"
LUA = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


class Ceiling:
    """The bare model in this process on batches of 32 of the same text: sequences per second.

    These machines are shared, and the same 10 s reading moved between 285 and 398 seq/s within one session.
    So the ceiling is read again right before each measured point, and each ratio uses the reading next to it.
    """

    def __init__(self) -> None:
        from slserve.runtime import load_runtime
        from slserve.runtime.batching import merge
        from slserve.snapshot import ArtifactStore

        self.runtime = load_runtime(ArtifactStore(ARTIFACTS).current("minilm"))
        feeds = self.runtime.prepare({"text": np.array([TEXT.encode()], dtype=object)})
        self.batch, _ = merge([feeds], 32)

    def rate(self, seconds: float, threads: int = 2) -> float:
        import torch

        torch.set_num_threads(threads)
        self.runtime.run(self.batch)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.runtime.run(self.batch)
            n += 32
        return n / (time.perf_counter() - start)


def wrk(url: str, concurrency: int, seconds: float, script: Path) -> dict[str, float]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{int(seconds)}s",
        "--latency",
        "--timeout",
        "30s",
        "-s",
        str(script),
        url,
    ]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", text, re.M))
    return {
        "rps": rps,
        "errors": float(errors.group(1)) if errors else 0.0,
        "p50": _ms(lat["50"]),
        "p99": _ms(lat["99"]),
    }


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    functions = make_functions(OUT / "functions-throughput", FUNCTIONS)
    model = Ceiling()
    threads = {t: model.rate(args.seconds / 2, t) for t in (1, 2)}  # 2 threads is the better on these cores
    script = OUT / "minilm.lua"
    results: dict[str, dict[int, dict[str, float]]] = {name: {} for name in [*FUNCTIONS, NO_LEDGER]}
    with gateway(functions) as gw:
        script.write_text(LUA.format(body=BODY, key=gw.key))
        for name in FUNCTIONS:  # bring up the instances first: cold starts are another benchmark
            wrk(f"{gw.url}/v2/models/{name}/infer", 64, 3, script)
        for c in CONCURRENCY:
            top = model.rate(args.seconds / 2)  # the idle instances' processes take no CPU meanwhile
            for name in FUNCTIONS:
                results[name][c] = {**wrk(f"{gw.url}/v2/models/{name}/infer", c, args.seconds, script), "ceiling": top}
                print(name, c, results[name][c], file=sys.stderr)
    # The platform alone: the same batching function without the ledger's durable write per request (its
    # cost is measured on its own in metering.py).
    with gateway(functions, metering=False) as gw:
        script.write_text(LUA.format(body=BODY, key=gw.key))
        wrk(f"{gw.url}/v2/models/minilm/infer", 64, 3, script)
        for c in CONCURRENCY:
            top = model.rate(args.seconds / 2)
            results[NO_LEDGER][c] = {**wrk(f"{gw.url}/v2/models/minilm/infer", c, args.seconds, script), "ceiling": top}
            print(NO_LEDGER, c, results[NO_LEDGER][c], file=sys.stderr)
    save("throughput", {"results": results, "ceiling_threads": threads})
    print(
        f"\nMachine: {machine()}. wrk -t1, {args.seconds:.0f} s per point; minilm: 1 thread per instance, "
        f"at most 2 instances; the same {len(TEXT.split())}-word sentence in every request.\n"
    )
    print(
        f"Ceiling (in-process, batch 32): {threads[1]:.0f} seq/s at 1 thread, {threads[2]:.0f} at 2 threads at the "
        f"start; each ratio uses the 2-thread reading taken right before its point ({args.seconds / 2:.0f} s).\n"
    )
    print(
        "| concurrency | ceiling (seq/s) | batching: req/s | p50 / p99 (ms) | x ceiling | no batching: req/s | "
        "x ceiling | ceiling (seq/s) | batching, no ledger: req/s | x ceiling | errors |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in CONCURRENCY:
        b, n, p = results["minilm"][c], results["minilm-nobatch"][c], results[NO_LEDGER][c]
        print(
            f"| {c} | {b['ceiling']:.0f} | {b['rps']:.0f} | {b['p50']:.1f} / {b['p99']:.1f} | "
            f"**{b['rps'] / b['ceiling']:.2f}** | {n['rps']:.0f} | {n['rps'] / n['ceiling']:.2f} | "
            f"{p['ceiling']:.0f} | {p['rps']:.0f} | **{p['rps'] / p['ceiling']:.2f}** | "
            f"{b['errors'] + n['errors'] + p['errors']:.0f} |"
        )


if __name__ == "__main__":
    main()
