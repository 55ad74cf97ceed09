"""Every core: one gateway process against `--workers N` (N fronts on one port and a platform process), on the
classifier and MiniLM (ONNX), wrk at rising concurrency. Targets (issue 27): gateway CPU per request ≤ 0.2 ms;
2 workers on 2 cores ≥ 1.6x one on the classifier.

Both gateways run over the same functions and are measured in alternation (the idle one costs nothing), several
rounds; a figure is the median of its points, a ratio the median of the ratios paired in one round. A gateway's
CPU is its own processes' (utime + stime from /proc): the gateway process, or the fronts and the platform
process; the instances' (and templates') CPU is reported apart, as "model".

Beside them, for the classifier, two floors on the same server stack (`echo_app.py`, one process): `POST /echo`
(uvicorn + uvloop + httptools + Starlette returning the body) and `/v2hop/classifier` (the v2 protocol's own
work: parse against the signature, one hop to a forked child, encode the answer; no key, route or ledger). What
a request costs there, no gateway can go under on this stack.

The projection onto a host of C cores assumes the work per request stays what was measured here, that fronts
scale with cores until the platform process (one event loop, one core) or the model's own CPU runs out, and that
nothing else runs: requests/s ≤ min(C / (gateway + model CPU per request), 1 / CPU per request of the one event
loop that cannot spread: the platform process's, or without workers the gateway process's).

    python benchmarks/gateway_cores.py [--seconds 6] [--rounds 3] [--workers 2] [--concurrency 8 32 64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from harness import OUT, Gateway, free_port, gateway, machine, make_functions, save, wait_ready
from metering import BODIES
from slserve.platform.local.memory import descendants
from throughput import LUA, wrk

FUNCTIONS = {name: (name, {"scaling": {"max_instances": 2, "target_concurrency": 16}}) for name in BODIES}


def _tree(root: int) -> dict[int, str]:
    """`root` and its descendants, with their titles (as `ps` shows them)."""
    out = {}
    for pid in {root, *descendants(root)}:
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue  # ended meanwhile
    return out


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(gw: Gateway) -> dict[int, tuple[str, float]]:
    """Each process of the gateway's tree: its role (front, platform, model) and its CPU seconds so far."""
    roles = {"slserve front": "front", "slserve gateway": "front", "slserve platform": "platform"}
    out = {}
    for pid, title in _tree(gw.proc.pid).items():
        role = next((r for prefix, r in roles.items() if title.startswith(prefix)), None)
        if role is None and title.startswith(("slserve instance", "slserve template")):
            role = "model"
        if role is not None:
            out[pid] = (role, _cpu_s(pid))
    return out


def used_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds between two readings by role: a process started between them counts from its start; one
    that ended between them (an idle instance stopped) drops out, its last stretch uncounted."""
    used = {"front": 0.0, "platform": 0.0, "model": 0.0}
    for pid, (role, cpu) in after.items():
        used[role] += cpu - before.get(pid, (role, 0.0))[1]
    return used


def point(gw: Gateway, name: str, concurrency: int, seconds: float, script: Path) -> dict[str, float]:
    before = cpu_by_process(gw)
    got = wrk(f"{gw.url}/v2/models/{name}/infer", concurrency, seconds, script)
    used = used_by_role(before, cpu_by_process(gw))
    assert got["errors"] == 0, got
    requests = got["rps"] * seconds
    per = {role: cpu * 1000 / requests for role, cpu in used.items()}
    return {
        **got,
        "front_ms": per["front"],
        "platform_ms": per["platform"],
        "gateway_ms": per["front"] + per["platform"],
        "model_ms": per["model"],
    }


@contextmanager
def floors() -> Iterator[tuple[int, str]]:
    """echo_app.py on a free port: its pid and URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("echo_app.py")), str(port)])
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", proc)
        yield proc.pid, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def floor_point(pid: int, url: str, concurrency: int, seconds: float, script: Path) -> dict[str, float]:
    before = _cpu_s(pid)
    got = wrk(url, concurrency, seconds, script)
    assert got["errors"] == 0, got
    return {**got, "gateway_ms": (_cpu_s(pid) - before) * 1000 / (got["rps"] * seconds)}


def project(points: list[dict[str, float]], cores: int, workers: bool) -> float:
    """Requests/s on `cores`: the host's CPU shared by all the work, and one event loop's core for what cannot
    spread (the platform process; without workers, the gateway process itself)."""
    gateway_ms = statistics.median(p["gateway_ms"] for p in points)
    model_ms = statistics.median(p["model_ms"] for p in points)
    one_loop_ms = statistics.median(p["platform_ms" if workers else "gateway_ms"] for p in points)
    return min(cores * 1000 / (gateway_ms + model_ms), 1000 / one_loop_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--cores", type=int, default=16, help="the host to project onto")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    functions = make_functions(OUT / "functions-cores", FUNCTIONS)
    layouts = {"1 process": "1", f"{args.workers} workers": str(args.workers)}
    results: dict[str, dict[str, dict[int, list[dict[str, float]]]]] = {}
    floor_paths = {"HTTP floor (/echo)": "/echo", "v2 floor (/v2hop)": "/v2hop/classifier"}
    floored: dict[str, dict[int, list[dict[str, float]]]] = {name: {} for name in floor_paths}
    with ExitStack() as stack:
        echo_pid, echo_url = stack.enter_context(floors())
        floor_script = OUT / "cores-floor.lua"
        floor_script.write_text(LUA.format(body=BODIES["classifier"], key="none"))
        gateways = {
            layout: stack.enter_context(gateway(functions, settings={"workers": n})) for layout, n in layouts.items()
        }
        scripts: dict[tuple[str, str], Path] = {}
        for layout, gw in gateways.items():
            for name in FUNCTIONS:
                scripts[layout, name] = OUT / f"cores-{len(scripts)}.lua"
                scripts[layout, name].write_text(LUA.format(body=BODIES[name], key=gw.key))
                wrk(f"{gw.url}/v2/models/{name}/infer", max(args.concurrency), 2, scripts[layout, name])  # warm
        for _ in range(args.rounds):
            for name in FUNCTIONS:
                for c in args.concurrency:
                    for layout, gw in gateways.items():
                        got = point(gw, name, c, args.seconds, scripts[layout, name])
                        results.setdefault(name, {}).setdefault(layout, {}).setdefault(c, []).append(got)
                        print(name, layout, c, got, file=sys.stderr)
            for c in args.concurrency:
                for floor, path in floor_paths.items():
                    got = floor_point(echo_pid, echo_url + path, c, args.seconds, floor_script)
                    floored[floor].setdefault(c, []).append(got)
                    print(floor, c, got, file=sys.stderr)
    save("gateway-cores", {"gateways": results, "floors": floored})
    one, many = layouts
    print(f"wrk -t1, {args.rounds} rounds of {args.seconds:g} s per point; {machine()}")
    print()
    print("| function | c | layout | req/s | p99 ms | gateway CPU ms/req (fronts + platform) | model CPU ms/req "
          f"| paired req/s vs 1 process | projected req/s on {args.cores} cores |")  # fmt: skip
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, by_layout in results.items():
        for c in args.concurrency:
            for layout in layouts:
                points = by_layout[layout][c]
                rps = statistics.median(p["rps"] for p in points)
                p99 = statistics.median(p["p99"] for p in points)
                front = statistics.median(p["front_ms"] for p in points)
                platform = statistics.median(p["platform_ms"] for p in points)
                model = statistics.median(p["model_ms"] for p in points)
                paired = statistics.median(p["rps"] / o["rps"] for p, o in zip(points, by_layout[one][c], strict=True))
                split = f"{front + platform:.3f} ({front:.3f} + {platform:.3f})" if layout == many else f"{front:.3f}"
                print(
                    f"| {name} | {c} | {layout} | {rps:.0f} | {p99:.1f} | {split} | {model:.3f} | {paired:.2f}x "
                    f"| {project(points, args.cores, layout == many):.0f} |"
                )
    print_floors(floored)


def print_floors(floored: dict[str, dict[int, list[dict[str, float]]]]) -> None:
    print()
    print("| floor (classifier's body, one process) | c | req/s | CPU ms/request |")
    print("| --- | ---: | ---: | ---: |")
    for floor, by_c in floored.items():
        for c, points in by_c.items():
            rps = statistics.median(p["rps"] for p in points)
            print(f"| {floor} | {c} | {rps:.0f} | {statistics.median(p['gateway_ms'] for p in points):.3f} |")


if __name__ == "__main__":
    main()
