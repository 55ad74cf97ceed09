"""Building several functions at once: one worker process per core, each building one function at a time.

Builds are independent (the store is content-addressed and every write in it is atomic), and most of a build is
single-threaded (the batching proof runs the model with the thread count it will serve with), so two cores build
two functions in about the time of one. Each worker's libraries get their share of the cores.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from slserve.errors import SlserveError
from slserve.host import cores
from slserve.spec import FunctionDef

Step = Callable[[str, str], None]  # (function, what its build is doing now)


@dataclass(frozen=True)
class Built:
    name: str
    digest: str | None
    cached: bool
    seconds: float
    error: SlserveError | None = None


def build_all(functions: list[FunctionDef], store: Path, force: bool, step: Step, workers: int) -> Iterator[Built]:
    """Build each function, `workers` at a time (in this process when 1), yielding each as it finishes. A function
    that fails does not stop the others: its `Built` carries the error."""
    if workers <= 1 or len(functions) <= 1:
        for fdef in functions:
            yield _build(fdef.directory, store, force, functools.partial(step, fdef.name))
        return
    context = multiprocessing.get_context("spawn")  # the parent may hold threads (progress display): no fork
    steps: multiprocessing.Queue[tuple[str, str]] = context.Queue()
    relay = threading.Thread(target=_relay, args=(steps, step), daemon=True)
    relay.start()
    threads = max(1, cores() // workers)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker, initargs=(steps, threads)) as pool:
        futures: list[Future[Built]] = [pool.submit(_build_in_worker, f.directory, store, force) for f in functions]
        pending = set(futures)
        while pending:
            for future in [f for f in futures if f in pending and f.done()]:
                pending.discard(future)
                yield future.result()
            time.sleep(0.05)
    steps.put(("", ""))  # ends the relay, then the queue (its feeder thread and semaphore) goes cleanly
    relay.join()
    steps.close()
    steps.join_thread()


def _build(directory: Path, store: Path, force: bool, report: Callable[[str], None]) -> Built:
    from slserve.build.function import build_function
    from slserve.snapshot import ArtifactStore
    from slserve.spec import load_function

    started = time.perf_counter()
    name = directory.name
    try:
        fdef = load_function(directory)
        result = build_function(fdef, ArtifactStore(store), force=force, report=report)
    except SlserveError as e:
        return Built(name, None, False, time.perf_counter() - started, e)
    return Built(fdef.name, result.artifact.digest, result.cached, time.perf_counter() - started)


_steps: multiprocessing.Queue[tuple[str, str]] | None = None


def _worker(steps: multiprocessing.Queue[tuple[str, str]], threads: int) -> None:
    global _steps
    _steps = steps
    # Before any library starts its thread pool: each worker gets its share of the cores for export and
    # conversion (the proof sets the function's own thread count itself).
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _build_in_worker(directory: Path, store: Path, force: bool) -> Built:
    steps = _steps
    assert steps is not None
    return _build(directory, store, force, lambda s: steps.put((directory.name, s)))


def _relay(steps: multiprocessing.Queue[tuple[str, str]], step: Step) -> None:
    while True:
        try:
            name, what = steps.get(timeout=1.0)
        except queue.Empty:
            continue
        except (EOFError, OSError):
            return
        if not name:
            return
        step(name, what)
