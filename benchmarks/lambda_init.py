"""Lambda init, measured here: the model function's handler under the official runtime client, against a
Runtime API peer, from process start to its first answer, and the init phase the handler reports (import,
artifact mapped, warm-up). minilm on ONNX Runtime runs from its zip alone on CPython 3.12 (Lambda's wheels);
minilm on torch runs from this virtualenv (its image's content). Beside the local template-fork cold start.

    python benchmarks/lambda_init.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import ARTIFACTS, OUT, ROOT, machine, make_functions, save

sys.path.insert(0, str(ROOT))
from tests.integration.lambda_peer import start_environment
from tests.integration.test_aws_packages import python312

from slserve.aws.package import function_zip, install_wheels
from slserve.platform.catalog import FolderCatalog
from slserve.snapshot import ArtifactStore

BODY = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["The quick brown fox."]}]}
EVENT = {"slserve": 1, "body": base64.b64encode(json.dumps(BODY).encode()).decode(), "headers": {}}


def first_answer(env: dict[str, str], python: str, log: Path) -> tuple[float, float]:
    """(process start to first answer, the init the handler reports), in ms."""
    started = time.perf_counter()
    environment = start_environment("slserve.aws.handler.handler", env, log, python=python)
    try:
        outcome = environment.api.invoke(EVENT, timeout_s=300)
        wall = (time.perf_counter() - started) * 1000
    finally:
        environment.stop()
    assert outcome.ok and outcome.body["statusCode"] == 200, (outcome.body, log.read_text()[-2000:])
    return wall, float(outcome.body["headers"]["x-slserve-cold-start-ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    functions = make_functions(
        OUT / "functions-lambda", {"minilm-onnx": ("minilm-onnx", {}), "minilm-torch": ("minilm-torch", {})}
    )
    store = ArtifactStore(ARTIFACTS)
    catalog = FolderCatalog(store, functions)
    work = Path(tempfile.mkdtemp(prefix="slserve-lambda-"))
    package = function_zip(store, catalog.functions()["minilm-onnx"], work / "zip")
    interpreter = python312()
    assert interpreter, "needs CPython 3.12 (Lambda's) to run the zip's wheels"
    install_wheels(work / "ric", ["awslambdaric==4.2.2"])
    cases = {
        "minilm-onnx (zip, CPython 3.12)": (
            {"PYTHONPATH": f"{package.directory}:{work / 'ric'}", "PYTHONNOUSERSITE": "1",
             "LAMBDA_TASK_ROOT": str(package.directory), "SLSERVE_FUNCTION": "minilm-onnx"},
            interpreter,
        ),
        "minilm-torch (image content, this venv)": (
            {"SLSERVE_ARTIFACTS": str(ARTIFACTS), "SLSERVE_FUNCTION": "minilm-torch"},
            sys.executable,
        ),
    }  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    for round_ in range(args.rounds):
        for name, (env, python) in cases.items():
            wall, init = first_answer(env, python, work / f"{round_}.log")
            r = results.setdefault(name, {"wall": [], "init": []})  # type: ignore[dict-item]
            r["wall"].append(wall)  # type: ignore[attr-defined]
            r["init"].append(init)  # type: ignore[attr-defined]
    summary = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}  # type: ignore[arg-type]
    save("lambda_init", {"machine": machine(), "package_mb": package.size_bytes / 2**20, **summary})
    print(f"\nMachine: {machine()}. Median of {args.rounds} rounds; page cache warm.\n")
    print("| function | handler's init phase (ms) | process start to first answer (ms) |")
    print("| --- | ---: | ---: |")
    for name, r in summary.items():
        print(f"| {name} | {r['init']:.0f} | {r['wall']:.0f} |")
    print(f"\nminilm-onnx zip: {package.size_bytes / 2**20:.1f} MB unzipped (Lambda's limit: 250 MB).")


if __name__ == "__main__":
    main()
