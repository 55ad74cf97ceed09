"""The template process of a runtime family: imports once, forks instances on demand.

Run as `python -m slserve.platform.local.template_process --control-fd N [--artifacts DIR --preload DIGEST...]
MODULE...`. It imports the runtime libraries and every function's own modules (model code, processors),
preloads each CPU function whole (module or session over the mapped weights), freezes the heap for
copy-on-write, and then waits on its control socket. Each spawn request carries the instance's end of a fresh
socket pair (passed with SCM_RIGHTS); the template forks, and the child serves on it.

The template runs no kernel and starts no thread before forking: a torch op in the parent (even
`torch.randn`) can leave forked children hung in the OpenMP pool, and an ONNX session with more than one
intra-op thread would lose its pool in the child. Loading runs neither (see `runtime.base.Preloaded`).

Control messages, one JSON object per SOCK_SEQPACKET message (so a passed descriptor stays with its request):
    gateway -> template   {"spawn": token, "function": ..., "instance": name, "artifacts": ..., "digest": ...,
                           "device": ...}
    template -> gateway   {"ready": import_ms} once; {"spawned": token, "pid": pid}; {"exited": pid, "status": "..."}
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from setproctitle import setproctitle

INSTANCE_NICE = 5


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by {signal.Signals(sig).name}" if sig in signal.Signals._value2member_map_ else f"signal {sig}"
    return f"exit code {os.WEXITSTATUS(status)}"


def _send(ctrl: socket.socket, obj: object) -> None:
    ctrl.send(orjson.dumps(obj))


def _fork_instance(
    ctrl: socket.socket, request: dict[str, object], fd: int, wake: tuple[int, int], preloaded: Any
) -> int:
    pid = os.fork()
    if pid:
        os.close(fd)
        return pid
    # The child: only the instance socket survives.
    code = 1
    try:
        ctrl.close()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for w in wake:
            os.close(w)
        # Models yield the CPU to the gateway and the ledger writer: those are light but on every request's
        # path, and waiting behind a batch for a core stalls every request (RESULTS.md: "nice +5").
        os.nice(INSTANCE_NICE)
        from slserve.platform.local.instance_process import InstanceConfig, serve_instance

        # `ps` and `top` say which instance this is, not the template's command line it was forked with.
        setproctitle(f"slserve instance {request['instance']} ({str(request['digest'])[:12]})")
        sock = socket.socket(fileno=fd)
        config = InstanceConfig(
            function=str(request["function"]),
            artifacts=Path(str(request["artifacts"])),
            digest=str(request["digest"]),
            device=None if request.get("device") is None else str(request["device"]),
        )
        code = serve_instance(sock, config, preloaded)
    except BaseException as e:
        print(f"slserve instance {os.getpid()}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap(ctrl: socket.socket, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _send(ctrl, {"exited": pid, "status": describe_status(status)})


def preload_one(store: Any, digest: str) -> Any:
    """Load one artifact here, as far as is fork-safe (see `Preloaded`), for every instance to inherit."""
    from slserve.runtime.base import preload_runtime

    try:
        return preload_runtime(store.open(digest))
    except Exception as e:
        print(f"slserve template: preloading {digest[:12]} failed ({e}); instances will load it", file=sys.stderr)
        return None


def _new_imports(store: Any, digest: str) -> int:
    """How many of a build's own modules this process has yet to import (its cost to preload, roughly)."""
    try:
        spec = store.open(digest).manifest.spec
    except Exception:
        return 0
    refs = [spec.source.factory, spec.processor.factory if spec.processor else None]
    return sum(1 for ref in refs if ref and ref.partition(":")[0] not in sys.modules)


def serve_template(ctrl: socket.socket, modules: list[str], root: Path | None, digests: list[str], first: int) -> None:
    """Import the framework (`modules[:first]`), say ready, then preload each build (which imports its own
    modules), one step at a time, forking instances between steps: a function whose build is preloaded is
    served while another's model code still imports. An instance asked for before its build's turn moves that
    build ahead and is forked right after its preload. Each build preloaded is reported; "preloaded" once all
    are."""
    started = time.perf_counter()
    for name in modules[:first]:
        importlib.import_module(name)
    importlib.import_module("slserve.platform.local.instance_process")  # the child's own code, imported once here
    gc.collect()
    gc.freeze()  # instances share the imported heap copy-on-write; a GC pass would touch (and copy) it all
    _send(ctrl, {"ready": (time.perf_counter() - started) * 1000, "pid": os.getpid()})
    store = None
    cost: dict[str, int] = {}
    if root is not None and digests:
        from slserve.snapshot import ArtifactStore

        store = ArtifactStore(root)
        cost = {d: _new_imports(store, d) for d in digests}
    deferred: dict[str, list[tuple[dict[str, Any], int]]] = {}  # digest -> spawns waiting for its preload

    def order(step: tuple[str, str]) -> tuple[int, int]:
        """Builds asked for first, then the others; the quickest to preload first within each; then the
        modules no preload imported (each preload imports its build's own)."""
        kind, what = step
        return (0 if what in deferred else 1, cost.get(what, 0)) if kind == "preload" else (2, 0)

    steps = sorted([("preload", d) for d in digests] + [("import", m) for m in modules[first:]], key=order)
    preloaded: dict[str, Any] = {}
    children: set[int] = set()
    # SIGCHLD wakes the loop through a pipe, so an instance's exit is reported the moment it happens.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
        readable, _, _ = select.select([ctrl.fileno(), wake_r], [], [], 0 if steps else 1.0)
        if wake_r in readable:
            os.read(wake_r, 4096)
        _reap(ctrl, children)
        if ctrl.fileno() in readable:
            data, fds, _, _ = socket.recv_fds(ctrl, 1 << 16, 1)
            if not data:  # the gateway is gone: so are we (instances see their own sockets close)
                for pid in children:
                    os.kill(pid, signal.SIGKILL)  # they ignore SIGTERM; their work has no one to answer to
                return
            request = orjson.loads(data)
            digest = str(request["digest"])
            if ("preload", digest) in steps:  # asked for before its turn: preloaded sooner, forked right after
                deferred.setdefault(digest, []).append((request, fds[0]))
                steps.sort(key=order)
                continue
            pid = _fork_instance(ctrl, request, fds[0], (wake_r, wake_w), preloaded.get(digest))
            children.add(pid)
            _send(ctrl, {"spawned": request["spawn"], "pid": pid})
            continue  # forks first: a request waiting for an instance is served before the next step
        if not steps:
            continue
        kind, what = steps.pop(0)
        if kind == "import":
            with contextlib.suppress(Exception):  # its build's preload (or instance) reports the error
                importlib.import_module(what)
        elif store is not None and (loaded := preload_one(store, what)) is not None:
            preloaded[what] = loaded
            _send(ctrl, {"preloaded_build": what})
        gc.collect()
        gc.freeze()
        for request, fd in deferred.pop(what, []):  # instances asked for while it waited its turn
            pid = _fork_instance(ctrl, request, fd, (wake_r, wake_w), preloaded.get(what))
            children.add(pid)
            _send(ctrl, {"spawned": request["spawn"], "pid": pid})
        if not steps:
            _send(ctrl, {"preloaded": (time.perf_counter() - started) * 1000})


def main() -> None:
    parser = argparse.ArgumentParser(description="slserve template process (started by the gateway)")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--family", required=True, help="the runtime family (shown in the process title)")
    parser.add_argument("--artifacts", type=Path, help="artifact store of the artifacts to preload")
    parser.add_argument("--preload", action="append", default=[], help="artifact digest to preload (repeatable)")
    parser.add_argument("--first", type=int, default=0, help="modules to import before saying ready (the framework)")
    parser.add_argument("modules", nargs="*")
    args = parser.parse_args()
    setproctitle(f"slserve template {args.family} ({len(args.preload)} builds preloaded)")
    # Ctrl-C, and a SIGTERM sent to the whole process group (systemd, `timeout`, a container's init), reach the
    # templates and their instances as well as the gateway: they ignore both (instances inherit it), so that the
    # gateway drains the work in flight and then stops them; they go when its sockets close.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctrl = socket.socket(fileno=args.control_fd)
    # BrokenPipe/ConnectionReset: the gateway went away first; instances notice their own sockets closing.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        serve_template(ctrl, args.modules, args.artifacts, args.preload, args.first)


if __name__ == "__main__":
    main()
