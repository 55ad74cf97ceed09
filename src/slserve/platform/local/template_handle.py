"""The gateway's side of a template process: start it, ask it to fork instances, hear about their exits."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from slserve.errors import RuntimeUnavailable
from slserve.framing import widen_buffers

ExitListener = Callable[[int, str], None]
GoneListener = Callable[["Template"], None]
# What a family's template imports before anything else: the framework itself and slserve's adapter.
RUNTIME_MODULES = {
    "torch": ["torch", "slserve.runtime.torch_runtime"],
    "onnx": ["onnxruntime", "slserve.runtime.onnx_runtime"],
}


class Template:
    """One running template process for a runtime family."""

    def __init__(self, family: str, modules: list[str], artifacts: Path, preload: list[str]) -> None:
        self.family = family
        self.modules = modules
        self.artifacts = artifacts
        self.preload = preload
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.import_ms: float | None = None
        self.error: str | None = None
        self._ctrl: socket.socket | None = None
        self._ready = asyncio.Event()  # it forks: its framework is imported
        self._preloaded = asyncio.Event()  # every build it was given is preloaded (or failed to)
        self.preloaded: set[str] = set()  # builds preloaded so far: their instances fork ready to serve
        self._tokens = itertools.count(1)
        self._spawned: dict[int, asyncio.Future[int]] = {}
        self._exit_listeners: list[ExitListener] = []
        self._gone_listeners: list[GoneListener] = []
        self.alive = False  # its control socket is open: it forks, and reports its instances' exits
        self.children: set[int] = set()  # instances forked and not yet exited
        self.retired = False  # replaced: forks nothing more, exits with its last instance
        self._exited: asyncio.Future[int | None] | None = None

    def on_exit(self, listener: ExitListener) -> None:
        self._exit_listeners.append(listener)

    def on_gone(self, listener: GoneListener) -> None:
        """`listener(template)` when the process goes away unasked (it crashed, or was killed)."""
        self._gone_listeners.append(listener)

    def start(self) -> None:
        self.launch()
        self.attach()

    def launch(self) -> None:
        """Start the process (no event loop needed: a gateway launches its templates before its own imports, so
        the framework's import overlaps them). What it says meanwhile waits in its socket until `attach`."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "slserve.platform.local.template_process", "--control-fd", str(theirs.fileno())]
        cmd += ["--family", self.family, f"--first={len(RUNTIME_MODULES[self.family])}"]
        cmd += ["--artifacts", str(self.artifacts), *(f"--preload={d}" for d in self.preload)]
        self.proc = subprocess.Popen([*cmd, *self.modules], pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        ours.setblocking(False)
        self._ctrl = ours
        self.alive = True

    def attach(self) -> None:
        """Listen to the process on the running loop."""
        assert self._ctrl is not None
        asyncio.get_running_loop().add_reader(self._ctrl.fileno(), self._on_readable)

    async def wait_ready(self) -> None:
        await self._ready.wait()
        if self.error:
            raise RuntimeUnavailable(self.error)

    async def wait_preloaded(self) -> None:
        """Every build it was started with is preloaded (a renewed template takes over only then)."""
        await self.wait_ready()
        await self._preloaded.wait()
        if self.error:
            raise RuntimeUnavailable(self.error)

    @property
    def settled(self) -> bool:
        """Ready, and every build it was started with preloaded."""
        return self.ready and self._preloaded.is_set()

    def ready_for(self, digest: str | None) -> bool:
        """It forks instances of `digest` ready to serve: preloaded, or never to be (loaded after the fork), or
        done preloading (its preload failed: the instance loads it and says why it cannot)."""
        return self.ready and (digest in self.preloaded or digest not in self.preload or self._preloaded.is_set())

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.error is None

    async def spawn(
        self, function: str, instance: str, artifacts: Path, digest: str, device: str | None = None
    ) -> tuple[socket.socket, int]:
        """Fork an instance (the template forks it once its build is preloaded, and preloads a build asked for
        before the others); returns the gateway's end of its socket and its pid."""
        await self.wait_ready()
        assert self._ctrl is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        widen_buffers(ours)
        widen_buffers(theirs)
        token = next(self._tokens)
        request = {
            "spawn": token,
            "function": function,
            "instance": instance,
            "artifacts": str(artifacts),
            "digest": digest,
            "device": device,
        }
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._spawned[token] = future
        try:
            socket.send_fds(self._ctrl, [orjson.dumps(request)], [theirs.fileno()])
        finally:
            theirs.close()
        pid = await asyncio.wait_for(future, timeout=30)
        return ours, pid

    def _on_readable(self) -> None:
        assert self._ctrl is not None
        try:
            data = self._ctrl.recv(1 << 16)
        except BlockingIOError:
            return
        except ConnectionError:
            data = b""
        if not data:
            self._on_gone()
            return
        self._handle(orjson.loads(data))

    def _handle(self, msg: dict[str, Any]) -> None:
        if "ready" in msg:
            self.import_ms, self.pid = float(msg["ready"]), int(msg["pid"])
            self._ready.set()
            if not self.preload:
                self._preloaded.set()
        elif "preloaded_build" in msg:
            self.preloaded.add(str(msg["preloaded_build"]))
        elif "preloaded" in msg:
            self._preloaded.set()
        elif "spawned" in msg:
            self.children.add(int(msg["pid"]))
            future = self._spawned.pop(int(msg["spawned"]), None)
            if future is not None and not future.done():
                future.set_result(int(msg["pid"]))
        elif "exited" in msg:
            self.children.discard(int(msg["exited"]))
            for listener in self._exit_listeners:
                listener(int(msg["exited"]), str(msg["status"]))
            if self.retired and not self.children:
                self._close()

    def _on_gone(self) -> None:
        was_ready = self.ready
        self._close_control()
        code = self.proc.poll() if self.proc else None
        if was_ready:
            self.error = f"the {self.family} template process exited ({code}); it is being restarted"
        else:
            self.error = self.error or (
                f"the {self.family} template process exited ({code}) while importing {self.modules}; "
                "run `slserve serve` in a terminal to see its error"
            )
        self._ready.set()
        self._preloaded.set()
        for future in self._spawned.values():
            if not future.done():
                future.set_exception(RuntimeUnavailable(self.error))
        for listener in self._gone_listeners:
            listener(self)

    def retire(self) -> None:
        """A renewed template took over: this one exits once the instances it forked have (their exits are
        still reported until then)."""
        self.retired = True
        if not self.children and not self._spawned:
            self._close()

    def _close(self) -> None:
        """Let the template process go (it exits when its control socket closes) and reap it off the loop."""
        self._close_control()
        if self.proc is not None and self._exited is None:
            self._exited = asyncio.get_running_loop().run_in_executor(None, self.proc.wait)

    def _close_control(self) -> None:
        self.alive = False
        if self._ctrl is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self._ctrl.fileno())
            self._ctrl.close()
            self._ctrl = None

    def stop(self) -> None:
        self._close_control()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
