"""The OS side of one function's instances: fork each from its family's template, connect its socket, wait for
it to report ready, stop it when asked (saying why), and learn how it ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from slserve.errors import RuntimeUnavailable, SlserveError, error_from_wire
from slserve.platform.channel import FrameChannel
from slserve.platform.local.instance_handle import Instance
from slserve.platform.local.template_handle import Template
from slserve.platform.wire import Kind, Message

START_TIMEOUT_S = 120.0
EXIT_REPORT_S = 1.0  # how long to wait for the template's report of an exit (the socket closes first)
log = logging.getLogger("slserve.platform")

OnMessage = Callable[[Instance, Message], None]
OnGone = Callable[[Instance, SlserveError | None], Awaitable[None]]


class Processes:
    """Instance processes of one function. `on_ready` hears an instance's READY, `on_reply` every later message,
    `on_gone` its end (with the error that stopped its start, if one did)."""

    def __init__(
        self,
        function: str,
        artifacts: Path,
        template: Template | None,
        on_ready: OnMessage,
        on_reply: OnMessage,
        on_gone: OnGone,
    ) -> None:
        self.function = function
        self.artifacts = artifacts
        self.template: Template | None = None
        self.on_ready, self.on_reply, self.on_gone = on_ready, on_reply, on_gone
        self._tasks: set[asyncio.Task[None]] = set()
        self._exits: dict[int, asyncio.Future[str]] = {}
        self._running: dict[int, Instance] = {}  # by pid, until its end is heard
        if template is not None:
            self.use(template)

    def use(self, template: Template) -> None:
        """Fork new instances from `template` (a renewed one); those of the previous template run on, and their
        exits are still heard from it."""
        if template is not self.template:
            template.on_exit(self._on_exit)
            self.template = template

    def start(self, inst: Instance) -> None:
        task = asyncio.get_running_loop().create_task(self._run(inst))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, inst: Instance) -> None:
        assert self.template is not None
        loop = asyncio.get_running_loop()
        start_error: SlserveError | None = None
        inst.template = template = self.template
        try:
            sock, inst.pid = await template.spawn(self.function, inst.name, self.artifacts, inst.digest)
            self._exits[inst.pid] = loop.create_future()
            self._running[inst.pid] = inst
            started: asyncio.Future[Message] = loop.create_future()

            def on_message(msg: Message) -> None:
                if not started.done():
                    started.set_result(msg)  # READY, or ERROR with request id 0: the start failed
                else:
                    self.on_reply(inst, msg)

            _, inst.channel = await loop.create_unix_connection(lambda: FrameChannel(on_message), sock=sock)
            closed = inst.channel.closed
            waiters: list[asyncio.Future[Any]] = [started, closed]
            await asyncio.wait(waiters, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
            if not started.done():
                if not closed.done():
                    raise TimeoutError
                return  # died while starting
            first = started.result()
            if first.kind is Kind.ERROR:
                start_error = error_from_wire(first.meta["status"], first.meta["code"], first.meta["message"])
                return
            self.on_ready(inst, first)
            await closed
        except ConnectionError:
            pass
        except TimeoutError:
            start_error = RuntimeUnavailable(f"{inst.name} did not report ready within {START_TIMEOUT_S:.0f} s")
        except SlserveError as e:
            start_error = e
        finally:
            if inst.pid is not None:
                self._running.pop(inst.pid, None)
            await self.on_gone(inst, start_error)

    def stop(self, inst: Instance, why: str) -> None:
        """Kill `inst` now; its end will say `why`."""
        inst.stopped_because = why
        log.warning("function %s: stopping instance %s (pid %s): %s", self.function, inst.name, inst.pid, why)
        if inst.pid is not None:
            kill(inst.pid)

    async def ended(self, inst: Instance, make_sure: bool) -> str:
        """How `inst` ended (`make_sure`: kill it first, in case its socket closed but the process lingers)."""
        hang_up(inst)
        if inst.pid is None:
            return "not started"
        if make_sure:
            kill(inst.pid)
        status = await self._exit_status(inst.pid, inst.template)
        return f"stopped by the gateway: {inst.stopped_because}" if inst.stopped_because else status

    def _on_exit(self, pid: int, status: str) -> None:
        waiter = self._exits.get(pid)
        if waiter is not None and not waiter.done():
            waiter.set_result(status)
        inst = self._running.get(pid)
        if inst is not None:
            hang_up(inst)  # its socket may outlive it (a process it forked holds a copy): its end is now

    def reconcile(self) -> None:
        """End the instances whose process is gone though no exit was reported (their template died too):
        their states follow their processes, not their sockets."""
        for pid, inst in list(self._running.items()):
            if not alive(pid):
                hang_up(inst)

    async def _exit_status(self, pid: int, template: Template | None) -> str:
        """As the template reaped it: the socket closes first, the report follows (none from a dead template)."""
        if template is not None and not template.alive:
            self._exits.pop(pid, None)
            return "exit status unknown: its template process is gone"
        waiter = self._exits.setdefault(pid, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout=EXIT_REPORT_S)
        except TimeoutError:
            return "exit status unknown"
        finally:
            self._exits.pop(pid, None)

    async def wait(self, timeout: float) -> None:
        """Until every instance task ended (those still running after `timeout` are cancelled)."""
        if self._tasks:
            _, still = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in still:
                task.cancel()


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def hang_up(inst: Instance) -> None:
    """Close the gateway's end of an instance's socket: its task then hears the end and reports it gone."""
    if inst.channel is not None:
        inst.channel.close()


def alive(pid: int) -> bool:
    """Whether `pid` is a process that has not ended (a zombie, ended but not yet reaped, is not alive)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False
