"""`slserve build` of every sample function, as a fresh clone runs it (issue 17): one at a time (`--jobs 1`)
against side by side (the default, one per core), then a forced rebuild (the batching proofs reused, as after a
change to slserve itself) and an unchanged one. Each from an empty artifact store, in one run.

Run: .venv/bin/python benchmarks/build_time.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, machine, save


def timed(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    code = "from slserve.cli import main; main()"
    subprocess.run([sys.executable, "-c", code, "build", *args], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(ROOT / "functions", work / "functions")
        figures = {
            "one at a time (--jobs 1), empty store": timed(["--jobs", "1", "--artifacts", "one"], work),
            "side by side (default), empty store": timed(["--artifacts", "many"], work),
            "--force (proofs reused)": timed(["--artifacts", "many", "--force"], work),
            "unchanged (no-op)": timed(["--artifacts", "many"], work),
        }
    print(f"machine: {machine()}")
    print("| build of every sample | seconds |\n| --- | ---: |")
    for what, seconds in figures.items():
        print(f"| {what} | {seconds:.1f} |")
    save("build_time", figures)


if __name__ == "__main__":
    main()
