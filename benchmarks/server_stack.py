"""Which ASGI server carries the gateway: uvicorn (uvloop + httptools) or granian, on the same echo app.

Concurrency 1 latency (aiohttp client, one keep-alive connection) and throughput at concurrency 32 (wrk), side
by side in one run. Run: `python benchmarks/server_stack.py` (needs `pip install granian` and wrk).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from harness import OUT, free_port, machine, pct, save, wait_ready
from throughput import wrk
from warm_overhead import sequential

HERE = Path(__file__).resolve().parent
BODY = b'{"inputs":[{"name":"features","datatype":"FP32","shape":[1,4],"data":[0.1,0.2,0.3,0.4]}]}'


def start(server: str, port: int) -> subprocess.Popen[bytes]:
    if server == "uvicorn":
        cmd = [sys.executable, str(HERE / "echo_app.py"), str(port)]
    else:
        granian = str(Path(sys.executable).with_name("granian"))
        cmd = [
            granian,
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--workers",
            "1",
            "--runtime-mode",
            "st",
            "--no-ws",
            "--log-level",
            "warning",
            "echo_app:app",
        ]
    proc = subprocess.Popen(cmd, cwd=HERE)
    wait_ready(f"http://127.0.0.1:{port}/ready", proc)
    return proc


def main() -> None:
    script = OUT / "echo.lua"
    OUT.mkdir(parents=True, exist_ok=True)
    script.write_text(
        'wrk.method = "POST"\nwrk.body = \'' + BODY.decode() + '\'\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    results: dict[str, dict[str, float]] = {}
    for _ in range(2):  # interleaved rounds
        for server in ("uvicorn", "granian"):
            port = free_port()
            proc = start(server, port)
            try:
                lat, _ = asyncio.run(sequential(f"http://127.0.0.1:{port}/echo", BODY, 3000))
                rps = wrk(f"http://127.0.0.1:{port}/echo", 32, 5, script)["rps"]
            finally:
                proc.terminate()
                proc.wait()
            r = results.setdefault(server, {"p50": 0.0, "p99": 0.0, "rps": 0.0})
            r["p50"] += pct(lat, 50) / 2
            r["p99"] += pct(lat, 99) / 2
            r["rps"] += rps / 2
    save("server_stack", results)
    print(f"\nMachine: {machine()}. Echo of a v2-sized POST; mean of 2 interleaved rounds.\n")
    print("| server | c=1 p50 / p99 (ms) | c=32 req/s (wrk) |")
    print("| --- | ---: | ---: |")
    for server, r in results.items():
        print(f"| {server} | {r['p50']:.3f} / {r['p99']:.3f} | {r['rps']:.0f} |")


if __name__ == "__main__":
    main()
