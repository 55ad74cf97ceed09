"""Issue 18's two figures, each measured side by side in one run:

1. Pipeline overhead: the sample ticket-router pipeline (minilm -> customer lookup -> concat -> triage) against
   a client calling the same steps one by one over HTTP (binary tensors; the client already holds the customer's
   features, which favours it), at concurrency 1. Overhead = latency minus the model steps' compute.
2. Drift statistics' cost on warm throughput: the same gateway with `drift` on and off, alternating, wrk at
   concurrency 32 on the classifier (a cheap model: the statistics' share is largest) and on minilm-onnx.

    python benchmarks/composition.py [--requests 300] [--seconds 8]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from harness import OUT, ROOT, gateway, machine, make_functions, pct, save
from throughput import wrk

FUNCTIONS = {name: (name, {}) for name in ("minilm-onnx", "triage", "ticket-router", "classifier")}
CUSTOMERS = ROOT / "samples/features/customers.csv"
TEXT = "The API returns 500 errors since this morning, production is down!"
BODIES = {
    "classifier": '{"inputs":[{"name":"features","datatype":"FP32","shape":[1,4],"data":[0.5,3.1,0.2,0.1]}]}',
    "minilm-onnx": '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["' + TEXT + '"]}]}',
}
LUA = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def binary(inputs: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    from slserve.platform.base import InferRequest
    from slserve.platform.v2 import encode_request

    return encode_request(InferRequest("", inputs))


def outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    from slserve.platform.v2 import HEADER_LENGTH, decode_outputs

    assert response.status_code == 200, response.text
    return decode_outputs(response.content, response.headers.get(HEADER_LENGTH))


def overhead(url: str, key: str, requests: int) -> dict[str, dict[str, float]]:
    with CUSTOMERS.open() as f:
        stored = {r[0]: np.array([float(v) for v in r[1:]], dtype=np.float32) for r in list(csv.reader(f))[1:]}
    text = np.array([TEXT.encode()], dtype=object)
    customer = "c-0042"
    seen: dict[str, list[tuple[float, float]]] = {"pipeline": [], "by hand": []}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:

        def pipeline() -> tuple[float, float]:
            body, head = binary({"text": text, "customer_id": np.array([customer.encode()], dtype=object)})
            started = time.perf_counter()
            response = client.post("/v2/models/ticket-router/infer", content=body, headers=head)
            took = time.perf_counter() - started
            outputs(response)
            steps = response.headers["x-slserve-steps"]
            compute = float(response.headers["x-slserve-compute-ms"])
            assert steps.count("function=") == 2
            return took * 1000, compute

        def by_hand() -> tuple[float, float]:
            started = time.perf_counter()
            body, head = binary({"text": text})
            first = client.post("/v2/models/minilm/infer", content=body, headers=head)
            features = np.concatenate([outputs(first)["embedding"], stored[customer][None, :]], axis=1)
            body, head = binary({"features": features})
            second = client.post("/v2/models/triage/infer", content=body, headers=head)
            outputs(second)
            took = time.perf_counter() - started
            compute = sum(float(r.headers["x-slserve-compute-ms"]) for r in (first, second))
            return took * 1000, compute

        for _ in range(20):  # instances up, caches warm
            pipeline(), by_hand()
        for _ in range(requests):  # alternating: both see the same moments of a shared machine
            seen["pipeline"].append(pipeline())
            seen["by hand"].append(by_hand())
    return {
        name: {
            "p50_ms": pct([t for t, _ in rows], 50),
            "p99_ms": pct([t for t, _ in rows], 99),
            "compute_p50_ms": pct([c for _, c in rows], 50),
            "overhead_p50_ms": pct([t - c for t, c in rows], 50),
        }
        for name, rows in seen.items()
    }


def drift_cost(functions: Path, seconds: float, rounds: int) -> dict[str, dict[str, list[float]]]:
    script = OUT / "composition.lua"
    rps: dict[str, dict[str, list[float]]] = {m: {"on": [], "off": []} for m in BODIES}
    for round_ in range(rounds):
        for drift in ("on", "off") if round_ % 2 == 0 else ("off", "on"):  # neither always goes first
            with gateway(functions, settings={"drift": "true" if drift == "on" else "false"}) as gw:
                for model, body in BODIES.items():
                    script.write_text(LUA.format(body=body, key=gw.key))
                    url = f"{gw.url}/v2/models/{model}/infer"
                    wrk(url, 32, 3, script)  # instances up
                    rps[model][drift].append(wrk(url, 32, seconds, script)["rps"])
                    print(model, drift, rps[model][drift][-1], file=sys.stderr)
    return rps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    functions = make_functions(OUT / "functions-composition", FUNCTIONS)
    with gateway(functions) as gw:
        load = [sys.executable, "-c", "from slserve.cli import main; main()", "features", "load", "customers"]
        subprocess.run([*load, str(CUSTOMERS), "--state", str(gw.state)], check=True, capture_output=True)
        lat = overhead(gw.url, gw.key, args.requests)
    rps = drift_cost(functions, args.seconds, args.rounds)
    save("composition", {"overhead": lat, "drift_rps": rps})
    print(f"\nMachine: {machine()}. {args.requests} requests per path at concurrency 1, alternating.\n")
    print("| path | p50 ms | p99 ms | model compute p50 ms | overhead p50 ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, row in lat.items():
        print(
            f"| {name} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['compute_p50_ms']:.2f} | "
            f"{row['overhead_p50_ms']:.2f} |"
        )
    ratio = lat["pipeline"]["overhead_p50_ms"] / lat["by hand"]["overhead_p50_ms"]
    print(f"\nPipeline overhead / by-hand overhead: **{ratio:.2f}x**\n")
    print(f"wrk -t1 -c32, {args.seconds:.0f} s per point, {args.rounds} rounds of drift on / off (a gateway each).\n")
    print("| model | drift on: req/s (median) | drift off: req/s (median) | on / off |")
    print("| --- | ---: | ---: | ---: |")
    for model, both in rps.items():
        on, off = float(np.median(both["on"])), float(np.median(both["off"]))  # a noisy neighbour moves one run
        runs = " / ".join(f"{a:.0f}-{b:.0f}" for a, b in zip(both["on"], both["off"], strict=True))
        print(f"| {model} | {on:.0f} | {off:.0f} | **{on / off:.3f}** (runs on-off: {runs}) |")


if __name__ == "__main__":
    main()
