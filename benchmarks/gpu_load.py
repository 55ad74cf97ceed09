"""On a CUDA host (benchmarks/gpu_check.sh runs it): two figures against their floors, measured in one run.

1. big-mlp's snapshot -> GPU load (`TorchRuntime.load(..., "cuda")`: mapped weights through pinned chunks)
   against the floor, its weight bytes over the host-to-device bandwidth measured here from pinned memory;
   beside it, the plain way (`module.to("cuda")` from the mapping). Page cache warm for both: the disk is not
   what is measured. Target: <= 1.3x the floor.
2. minilm-fp16 on the GPU through the gateway (64 clients, one sentence each) against its in-process ceiling
   (the bare model on batches of 32 in this process).

    python benchmarks/gpu_load.py [--seconds 10]     # prints a Markdown section; exits 0 with a note without CUDA
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import numpy as np
import torch

from harness import ARTIFACTS, OUT, gateway, machine, make_functions, save, warm_page_cache

TEXT = "The quick brown fox jumps over the lazy dog."
BODY = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}]}


def bandwidth_gb_s(nbytes: int = 1 << 30, reps: int = 5) -> float:
    """Host-to-device copy from pinned memory: the best of `reps`."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    device.copy_(host)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        device.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    del host, device
    torch.cuda.empty_cache()
    return nbytes / min(times) / 1e9


def timed(load: object, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        module = load()  # type: ignore[operator]
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        del module
        torch.cuda.empty_cache()
    return statistics.median(times)


def load_figures() -> dict[str, float]:
    from slserve.runtime.torch_runtime import TorchRuntime, assign_tensors, build_skeleton, torch_tensors
    from slserve.snapshot import ArtifactStore

    artifact = ArtifactStore(ARTIFACTS).current("big-mlp")
    warm_page_cache([artifact.store.blobs.path(d) for d in artifact.manifest.unique_blobs()])
    weight_bytes = artifact.manifest.weight_bytes

    def plain() -> torch.nn.Module:
        module = build_skeleton(artifact.manifest.spec)
        assign_tensors(module, torch_tensors(artifact))
        return module.to("cuda")

    gb_s = bandwidth_gb_s()
    staged = timed(lambda: TorchRuntime.load(artifact, device="cuda"))
    baseline = timed(plain)
    floor = weight_bytes / (gb_s * 1e9)
    return {
        "weight_gb": weight_bytes / 1e9,
        "h2d_gb_s": gb_s,
        "floor_s": floor,
        "staged_s": staged,
        "plain_s": baseline,
    }


def ceiling_seq_s(seconds: float) -> float:
    from slserve.runtime import load_runtime
    from slserve.runtime.batching import merge
    from slserve.snapshot import ArtifactStore

    runtime = load_runtime(ArtifactStore(ARTIFACTS).current("minilm-fp16"), device="cuda")
    batch, _ = merge([runtime.prepare({"text": np.array([TEXT.encode()], dtype=object)})], 32)
    runtime.run(batch)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runtime.run(batch)
        n += 32
    return n / (time.perf_counter() - start)


async def _load(url: str, auth: dict[str, str], clients: int, seconds: float) -> tuple[int, int]:
    import httpx

    ok = failed = 0
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=clients)) as client:

        async def one() -> None:
            nonlocal ok, failed
            while time.monotonic() < stop:
                r = await client.post(url, json=BODY, headers=auth)
                ok += r.status_code == 200
                failed += r.status_code != 200

        await asyncio.gather(*(one() for _ in range(clients)))
    return ok, failed


def gateway_req_s(seconds: float, clients: int = 64) -> tuple[float, int]:
    functions = make_functions(OUT / "functions-gpu", {"minilm-fp16": ("minilm-fp16", {})})
    with gateway(functions) as gw:
        url = f"{gw.url}/v2/models/minilm-fp16/infer"
        asyncio.run(_load(url, gw.auth, clients, 3))  # instances up first: cold starts are another figure
        ok, failed = asyncio.run(_load(url, gw.auth, clients, seconds))
    return ok / seconds, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA device on this host: the GPU figures need one (benchmarks/gpu_check.sh on a GPU machine).")
        return
    device = torch.cuda.get_device_name(0)
    load = load_figures()
    ceiling = ceiling_seq_s(args.seconds / 2)
    served, failed = gateway_req_s(args.seconds)
    save("gpu_load", {"device": device, "load": load, "ceiling": ceiling, "served": served, "failed": failed})
    print(f"\n### GPU check ({time.strftime('%Y-%m-%d')}, {device}; host: {machine()})\n")
    print("| big-mlp snapshot -> GPU | weights (GB) | H2D pinned (GB/s) | floor (s) | staged load (s) | x floor |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| pinned chunks (slserve) | {load['weight_gb']:.2f} | {load['h2d_gb_s']:.1f} | {load['floor_s']:.3f} | "
        f"{load['staged_s']:.3f} | {load['staged_s'] / load['floor_s']:.2f} |"
    )
    print(
        f"| `module.to('cuda')` from the mapping | {load['weight_gb']:.2f} | {load['h2d_gb_s']:.1f} | "
        f"{load['floor_s']:.3f} | {load['plain_s']:.3f} | {load['plain_s'] / load['floor_s']:.2f} |"
    )
    print(
        f"\nminilm-fp16 on the GPU: in-process ceiling {ceiling:.0f} seq/s (batch 32); through the gateway, "
        f"64 clients for {args.seconds:.0f} s: {served:.0f} req/s ({served / ceiling:.2f}x the ceiling), "
        f"{failed} failed.",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
