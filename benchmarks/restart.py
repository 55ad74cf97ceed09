"""A restarted gateway (issue 16, part 2): process start -> first answer of each function, with every sample
function behind it (as `make serve` runs), against what must happen first: importing the function's framework
in a fresh interpreter (torch; onnxruntime), and, for MiniLM, the model code's own imports (transformers' BERT).
Targets: an ONNX function's first answer within 1.5 s; a torch function's within `import torch` + 0.5 s.
Several rounds, each a fresh gateway; the first answer to each function is asked for at once, in parallel.

    python benchmarks/restart.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from harness import ARTIFACTS, OUT, free_port, machine, save

BODIES = {
    "classifier": {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [3, 3, 0, 0]}]},
    "minilm-onnx": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["restart"]}]},
    "big-mlp": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1024], "data": [0.0] * 1024}]},
    "minilm-torch": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["restart"]}]},
}
IMPORTS = {
    "import torch": "import torch",
    "import onnxruntime": "import onnxruntime",
    "import torch + transformers' BERT": "import torch; from transformers.models.bert.modeling_bert import BertModel",
}


def import_seconds(statement: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True)
    return time.perf_counter() - started


def first_answers(key: str, state: Path) -> dict[str, float]:
    port = free_port()
    code = "from slserve.cli import main; main()"
    functions = Path(__file__).parents[1] / "functions"
    command = [sys.executable, "-c", code, "serve", "--port", str(port), "--functions", str(functions),
               "--artifacts", str(ARTIFACTS), "--state", str(state)]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def first(name: str) -> float:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/models/{name}/infer",
            data=orjson.dumps(BODIES[name]),
            headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
        )
        while time.perf_counter() - started < 120:
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            except (urllib.error.URLError, OSError):
                time.sleep(0.02)
        raise TimeoutError(name)

    try:
        with concurrent.futures.ThreadPoolExecutor(len(BODIES)) as pool:
            return dict(zip(BODIES, pool.map(first, BODIES), strict=True))
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from slserve.accounts.keys import SQLiteKeyStore, new_key

    state = OUT / "restart/state"
    key = SQLiteKeyStore(state).create(new_key("bench", admin=True))
    rounds = []
    for _ in range(args.rounds):
        floors = {label: import_seconds(statement) for label, statement in IMPORTS.items()}
        rounds.append({**floors, **first_answers(key, state)})
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"machine: {machine()}; {args.rounds} rounds, medians (min-max)\n")
    print("| | seconds | target |\n| --- | ---: | --- |")
    for k in med:
        lo, hi = min(r[k] for r in rounds), max(r[k] for r in rounds)
        target = ""
        if k in ("classifier", "minilm-onnx"):
            target = "1.5 s"
        elif k in ("big-mlp", "minilm-torch"):
            target = f"import torch + 0.5 s = {med['import torch'] + 0.5:.2f} s"
        label = k if k.startswith("import") else f"first answer of {k}"
        print(f"| {label} | {med[k]:.2f} ({lo:.2f}-{hi:.2f}) | {target} |")
    save("restart", rounds)


if __name__ == "__main__":
    main()
