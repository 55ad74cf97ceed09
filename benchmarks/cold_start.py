"""Cold-start penalty: the first response at zero instances minus a warm response, through the gateway.

Side by side, each round: slserve (scale to zero, then one request), a naive cold start (a fresh `python` that
imports torch and the model code, builds the module (big-mlp on the meta device, to skip a 1 GB random init),
`torch.load`s the state dict into it and runs once; its penalty is that first result minus its own second
call) and the floor (reading the
model's weight bytes from the page cache). Everything reads from a warm page cache. Run: `make bench`.

    python benchmarks/cold_start.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

from harness import ARTIFACTS, OUT, gateway, machine, make_functions, pct, save, warm_page_cache

FUNCTIONS = {
    "minilm": ("minilm-torch", {"scaling": {"idle_seconds": 1}}),
    "big-mlp": ("big-mlp", {"scaling": {"idle_seconds": 1}}),
}
REQUESTS = {
    "minilm": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["The quick brown fox."]}]},
    "big-mlp": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1024], "data": [0.01] * 1024}]},
}
NAIVE = {
    "minilm": """
        import torch
        from slserve_samples.minilm import build_encoder
        from slserve.runtime.base import RequestContext
        from slserve_samples.text import TextProcessor
        model = build_encoder()
        model.load_state_dict(torch.load(cfg["pt"], weights_only=True), strict=False)
        model.eval()
        processor = TextProcessor({"tokenizer.json": cfg["tokenizer"]})
        def call():
            import numpy as np
            f = processor.preprocess({"text": np.array([b"The quick brown fox."], dtype=object)}, RequestContext())
            with torch.inference_mode():
                return model(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"]))
    """,
    "big-mlp": """
        import torch
        from slserve_samples.big_mlp import build
        with torch.device("meta"):  # no 1 GB random init: the weights come from the state dict
            model = build()
        model.load_state_dict(torch.load(cfg["pt"], weights_only=True), assign=True)
        model.eval()
        def call():
            with torch.inference_mode():
                return model(torch.full((1, 1024), 0.01))
    """,
}
NAIVE_MAIN = """
import json, sys, time
cfg = json.loads(sys.argv[1])
{body}
first = time.perf_counter()
call()
after_first = time.perf_counter()
call()
print(json.dumps({{"end_first": time.time(), "warm_ms": (time.perf_counter() - after_first) * 1000}}))
"""
FLOOR = """
import json, sys, time
paths = json.loads(sys.argv[1])
buf = bytearray(1 << 26)
start = time.perf_counter()
for p in paths:
    with open(p, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
print((time.perf_counter() - start) * 1000)
"""


def prepare_naive(name: str) -> tuple[dict[str, str], list[Path]]:
    """A torch.save'd state dict of the same weights, as a naive deployment would ship it."""
    import torch

    from slserve.runtime.torch_runtime import torch_tensors
    from slserve.snapshot import ArtifactStore

    artifact = ArtifactStore(ARTIFACTS).current(name)
    pt = OUT / f"{name}.state_dict.pt"
    if not pt.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.clone() for k, v in torch_tensors(artifact).items()}, pt)
    cfg = {"pt": str(pt)}
    if "tokenizer.json" in artifact.asset_paths():
        cfg["tokenizer"] = str(artifact.asset_paths()["tokenizer.json"])
    blobs = [artifact.store.blobs.path(d) for d in {t.digest for t in artifact.manifest.tensors.values()}]
    return cfg, blobs


def naive_run(name: str, cfg: dict[str, str]) -> tuple[float, float]:
    script = NAIVE_MAIN.format(body=textwrap.dedent(NAIVE[name]))
    start = time.time()
    out = subprocess.run([sys.executable, "-c", script, json.dumps(cfg)], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return (result["end_first"] - start) * 1000, result["warm_ms"]


def floor_run(blobs: list[Path]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", FLOOR, json.dumps([str(b) for b in blobs])], check=True, capture_output=True, text=True
    )
    return float(out.stdout.strip())


def slserve_round(client: httpx.Client, gw: object, name: str) -> dict[str, float]:
    gw.wait_for_zero(name)  # type: ignore[attr-defined]
    start = time.perf_counter()
    r = client.post(f"/v2/models/{name}/infer", json=REQUESTS[name])
    cold = (time.perf_counter() - start) * 1000
    assert r.status_code == 200 and "x-slserve-cold-start-ms" in r.headers, (r.status_code, r.headers)
    warm = []
    for _ in range(10):
        start = time.perf_counter()
        assert client.post(f"/v2/models/{name}/infer", json=REQUESTS[name]).status_code == 200
        warm.append((time.perf_counter() - start) * 1000)
    return {
        "cold_ms": cold,
        "warm_ms": statistics.median(warm),
        "instance_start_ms": float(r.headers["x-slserve-cold-start-ms"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    functions = make_functions(OUT / "functions-cold", FUNCTIONS)
    prepared = {name: prepare_naive(name) for name in FUNCTIONS}
    for cfg, blobs in prepared.values():
        warm_page_cache([*blobs, Path(cfg["pt"])])
    rows: dict[str, dict[str, list[float]]] = {n: {} for n in FUNCTIONS}
    with gateway(functions) as gw, httpx.Client(base_url=gw.url, timeout=120, headers=gw.auth) as client:
        for name in FUNCTIONS:  # one untimed start each, so every timed round starts from the same state
            client.post(f"/v2/models/{name}/infer", json=REQUESTS[name])
        for round_ in range(args.rounds):
            for name, (cfg, blobs) in prepared.items():
                got = slserve_round(client, gw, name)
                got["penalty_ms"] = got["cold_ms"] - got["warm_ms"]
                naive_total, naive_warm = naive_run(name, cfg)
                got["naive_ms"], got["naive_penalty_ms"] = naive_total, naive_total - naive_warm
                got["floor_ms"] = floor_run(blobs)
                for k, v in got.items():
                    rows[name].setdefault(k, []).append(v)
            print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr)
    report(rows, args.rounds)


def report(rows: dict[str, dict[str, list[float]]], rounds: int) -> None:
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in rows.items()}
    save("cold_start", {"median": med, "samples": rows})
    print(f"\nMachine: {machine()}. Median of {rounds} interleaved rounds.\n")
    print(
        "| function | warm (ms) | first response at zero (ms) | **penalty** (ms) | penalty p-max (ms) | floor (ms) | "
        "penalty / floor | naive penalty (ms) | naive / slserve |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, m in med.items():
        print(
            f"| {name} | {m['warm_ms']:.1f} | {m['cold_ms']:.1f} | **{m['penalty_ms']:.1f}** | "
            f"{pct(rows[name]['penalty_ms'], 100):.1f} | {m['floor_ms']:.1f} | {m['penalty_ms'] / m['floor_ms']:.2f} | "
            f"{m['naive_penalty_ms']:.0f} | {m['naive_penalty_ms'] / m['penalty_ms']:.1f}x |"
        )


if __name__ == "__main__":
    main()
