"""Restore big-mlp's ~1 GB of weights in a fresh process until every weight byte has been touched once.

Each method runs in its own fresh Python process (torch already imported, the clock started just before the
restore) and is timed to the end of one forward pass at batch 1: a matrix-vector product reads every weight byte
once, so lazy mappings cannot hide their cost. The floor reads the same bytes from the page cache into a buffer.
All files are read once first so that every method reads from the page cache. Run: `make bench`.

    python benchmarks/snapshot_restore.py [--repeat 5] [--artifacts .slserve/artifacts] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Every child gets `paths` (its files) and `order` (the parameter names in forward order) and prints one JSON
# line {"restore_s": ..., "total_s": ...}. The forward pass is the same functional code for all of them.
PRELUDE = """
import json, sys, time, torch
import torch.nn.functional as F
torch.set_num_threads(2)
cfg = json.loads(sys.argv[1])
def forward(t):
    x = torch.ones(1, 1024)
    names = cfg["order"]
    with torch.inference_mode():
        for i in range(0, len(names), 2):
            x = F.linear(x, t[names[i]], t[names[i + 1]])
            if i + 2 < len(names):
                x = torch.relu(x)
    return float(x.sum())
"""

METHODS = {
    "floor: read bytes from page cache": """
import os
sizes = [os.path.getsize(p) for p in cfg["paths"]]
buf = bytearray(max(sizes))
start = time.perf_counter()
for p in cfg["paths"]:
    with open(p, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
restored = total = time.perf_counter()
""",
    "slserve snapshot (mmap)": """
from slserve.snapshot import ArtifactStore
from slserve.runtime.torch_runtime import torch_tensors
store = ArtifactStore(__import__("pathlib").Path(cfg["artifacts"]))
artifact = store.current("big-mlp")
start = time.perf_counter()
t = torch_tensors(artifact)
restored = time.perf_counter()
forward(t)
total = time.perf_counter()
""",
    "torch.load": """
start = time.perf_counter()
t = torch.load(cfg["torch_file"], weights_only=True)
restored = time.perf_counter()
forward(t)
total = time.perf_counter()
""",
    "torch.load(mmap=True)": """
start = time.perf_counter()
t = torch.load(cfg["torch_file"], weights_only=True, mmap=True)
restored = time.perf_counter()
forward(t)
total = time.perf_counter()
""",
    "safetensors load_file": """
from safetensors.torch import load_file
start = time.perf_counter()
t = load_file(cfg["safetensors_file"])
restored = time.perf_counter()
forward(t)
total = time.perf_counter()
""",
}
EPILOGUE = 'print(json.dumps({"restore_s": restored - start, "total_s": total - start}))'


def prepare(artifacts: Path, out: Path) -> dict[str, object]:
    import torch
    from safetensors.torch import save_file

    from slserve.runtime.torch_runtime import torch_tensors
    from slserve.snapshot import ArtifactStore

    artifact = ArtifactStore(artifacts).current("big-mlp")
    artifact.verify()
    manifest = artifact.manifest
    # nn.Sequential names: "<layer>.weight", "<layer>.bias"; forward order is by layer index, weight first.
    order = sorted(manifest.tensors, key=lambda n: (int(n.split(".")[0]), n.endswith("bias")))
    paths = [str(artifact.store.blobs.path(manifest.tensors[n].digest)) for n in order]
    out.mkdir(parents=True, exist_ok=True)
    torch_file, st_file = out / "big-mlp.pt", out / "big-mlp.safetensors"
    if not torch_file.exists() or not st_file.exists():
        tensors = {k: v.clone() for k, v in torch_tensors(artifact).items()}
        torch.save(tensors, torch_file)
        save_file(tensors, str(st_file))
    for p in [*paths, torch_file, st_file]:  # warm the page cache for every method alike
        with open(p, "rb", buffering=0) as f:
            while f.read(64 << 20):
                pass
    return {
        "paths": paths,
        "order": order,
        "artifacts": str(artifacts),
        "torch_file": str(torch_file),
        "safetensors_file": str(st_file),
        "bytes": manifest.weight_bytes,
    }


def run_method(code: str, cfg: dict[str, object]) -> dict[str, float]:
    script = PRELUDE + textwrap.dedent(code) + EPILOGUE
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(cfg)], check=True, capture_output=True, text=True, cwd=ROOT
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--artifacts", type=Path, default=ROOT / ".slserve/artifacts")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/out")
    args = parser.parse_args()
    cfg = prepare(args.artifacts, args.out)
    gb = int(str(cfg["bytes"])) / 1e9
    n_tensors = len(cfg["order"])  # type: ignore[arg-type]
    samples: dict[str, dict[str, list[float]]] = {}
    for round_ in range(args.repeat):  # interleaved rounds: drift on a shared machine hits every method alike
        for name, code in METHODS.items():
            for k, v in run_method(code, cfg).items():
                samples.setdefault(name, {}).setdefault(k, []).append(v)
        print(f"round {round_ + 1}/{args.repeat} done", file=sys.stderr)
    median = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in samples.items()}
    floor = median["floor: read bytes from page cache"]["total_s"]
    plain = median["torch.load"]["total_s"]
    lines = [
        f"big-mlp: {gb:.2f} GB float32, {n_tensors} tensors, median of {args.repeat} interleaved "
        f"rounds, each a fresh process; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_version()}",
        "",
        "| method | restore (ms) | restore + forward (ms) | x floor | torch.load / this |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, m in median.items():
        lines.append(
            f"| {name} | {1e3 * m['restore_s']:.1f} | {1e3 * m['total_s']:.1f} | {m['total_s'] / floor:.2f} | "
            f"{plain / m['total_s']:.1f} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
