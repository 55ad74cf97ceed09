"""What traces cost the gateway: throughput and the gateway process's own CPU per request with traces off,
on but not exported (`OTEL_TRACES_EXPORTER=none`: every span made, the trace id in the ledger and the log),
exported over OTLP/HTTP with every request sampled, and exported with one request in ten sampled
(`OTEL_TRACES_SAMPLER=traceidratio`). Targets (issue 27): on, not exported, within noise of off; exported ≤ 5%.

Four gateways over the same function, measured in alternation (wrk, c=32, one thread; the idle ones cost
nothing), several rounds; the figure is each mode's median paired ratio against off in the same round. The
exported modes send to a sink on loopback that reads each export and answers 200 (a collector's cost is not the
gateway's). The gateway's CPU is its own process's (utime + stime from /proc), its instances left out.

    python benchmarks/traces.py [--seconds 8] [--rounds 5] [--function classifier]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import threading
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from harness import OUT, Gateway, gateway, machine, make_functions, save
from metering import BODIES
from throughput import LUA, wrk

FUNCTIONS = {name: (name, {"scaling": {"max_instances": 2, "target_concurrency": 16}}) for name in BODIES}


class Sink:
    """An OTLP/HTTP endpoint that takes every export and keeps only its count and size."""

    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sink.bytes += len(self.rfile.read(int(self.headers.get("content-length", 0))))
                sink.exports += 1
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1/traces"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


def modes(sink: Sink) -> dict[str, dict[str, str]]:
    exported = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": sink.url}
    return {
        "off": {},
        "on, not exported": {"OTEL_TRACES_EXPORTER": "none"},
        "exported, all sampled": exported,
        "exported, 1 in 10 sampled": {
            **exported,
            "OTEL_TRACES_SAMPLER": "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
        },
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def point(gw: Gateway, name: str, seconds: float, script: Path) -> dict[str, float]:
    before = cpu_seconds(gw.proc.pid)
    got = wrk(f"{gw.url}/v2/models/{name}/infer", 32, seconds, script)
    used = cpu_seconds(gw.proc.pid) - before
    assert got["errors"] == 0, got
    return {**got, "cpu_ms_per_request": used * 1000 / (got["rps"] * seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--function", choices=sorted(BODIES), default="classifier")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    name = args.function
    functions = make_functions(OUT / "functions-traces", {name: FUNCTIONS[name]})
    sink = Sink()
    results: dict[str, list[dict[str, float]]] = {}
    with ExitStack() as stack:
        gateways = {mode: stack.enter_context(gateway(functions, environ=env)) for mode, env in modes(sink).items()}
        scripts = {}
        for mode, gw in gateways.items():
            scripts[mode] = OUT / f"traces-{len(scripts)}.lua"
            scripts[mode].write_text(LUA.format(body=BODIES[name], key=gw.key))
            wrk(f"{gw.url}/v2/models/{name}/infer", 32, 2, scripts[mode])  # instances up, caches warm
            results[mode] = []
        for _ in range(args.rounds):
            for mode, gw in gateways.items():
                results[mode].append(point(gw, name, args.seconds, scripts[mode]))
                print(mode, results[mode][-1], file=sys.stderr)
    save(f"traces-{name}", {"results": results, "exports": sink.exports, "export_bytes": sink.bytes})
    print(f"{name}, wrk -t1 -c32, {args.rounds} rounds of {args.seconds:g} s; {machine()}")
    print()
    print("| traces | req/s (median) | gateway CPU ms/request (median) | paired req/s vs off | paired CPU vs off |")
    print("| --- | ---: | ---: | ---: | ---: |")
    off = results["off"]
    for mode, points in results.items():
        rps = statistics.median(p["rps"] for p in points)
        cpu = statistics.median(p["cpu_ms_per_request"] for p in points)
        paired_rps = statistics.median(p["rps"] / o["rps"] for p, o in zip(points, off, strict=True))
        paired_cpu = statistics.median(
            p["cpu_ms_per_request"] / o["cpu_ms_per_request"] for p, o in zip(points, off, strict=True)
        )
        print(f"| {mode} | {rps:.0f} | {cpu:.3f} | {paired_rps:.2f}x | {paired_cpu:.2f}x |")
    print()
    print(f"The sink took {sink.exports} exports, {sink.bytes / 1e6:.1f} MB of OTLP protobuf.")


if __name__ == "__main__":
    main()
