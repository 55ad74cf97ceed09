"""Functions on this machine: init, build, inspect, verify, invoke."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from slserve.cli.common import (
    DEFAULT_ARTIFACTS,
    DEFAULT_FUNCTIONS,
    ArtifactsDir,
    FunctionsDir,
    console,
    err_console,
)
from slserve.errors import BuildError, SlserveError
from slserve.snapshot import ArtifactStore
from slserve.spec import SPEC_FILENAME, FunctionDef, discover_functions, load_function
from slserve.terminal import print_table


def _select(functions: Path, names: list[str] | None) -> list[FunctionDef]:
    if names:
        return [load_function(functions / n) for n in names]
    found = discover_functions(functions)
    if not found:
        raise SlserveError(f"{functions}: no function folders with a {SPEC_FILENAME}; try `slserve init NAME`")
    return found


def _build_pipelines(functions: Path, names: list[str] | None, store: ArtifactStore) -> int:
    """Check and publish pipelines (all, or those named); returns how many failed (each said)."""
    from slserve.compose.catalog import build_pipeline
    from slserve.compose.spec import discover_pipelines, load_pipeline

    selected = [load_pipeline(functions / n) for n in names] if names else discover_pipelines(functions)
    failed = 0
    for pdef in selected:
        try:
            digest = build_pipeline(pdef, discover_functions(functions), store)
        except SlserveError as e:
            err_console.print(f"[red]{escape(pdef.name)}[/]: {escape(e.message)}")
            failed += 1
            continue
        steps = len(pdef.spec.steps)
        console.print(f"{pdef.name}: pipeline of {steps} steps checked and published ({digest[:12]})", highlight=False)
    return failed


def build(
    names: Annotated[list[str] | None, typer.Argument(help="Functions to build (default: all)")] = None,
    functions: FunctionsDir = DEFAULT_FUNCTIONS,
    artifacts: ArtifactsDir = DEFAULT_ARTIFACTS,
    force: Annotated[bool, typer.Option(help="Rebuild even when nothing changed")] = False,
    jobs: Annotated[int | None, typer.Option(help="Functions built at once (default: one per core)")] = None,
) -> None:
    """Turn functions into immutable, content-addressed artifacts. Unchanged functions are no-ops."""
    from slserve.build.parallel import build_all
    from slserve.compose.spec import PIPELINE_FILENAME
    from slserve.host import cores

    # Pipelines are checked after the functions (against the functions' specs, so a function need not be built).
    pipelines = [n for n in names or [] if (functions / n / PIPELINE_FILENAME).is_file()]
    if names and len(pipelines) == len(names):
        if _build_pipelines(functions, pipelines, ArtifactStore(artifacts)):
            raise BuildError(f"pipeline(s) {', '.join(pipelines)} failed their check; see above")
        return
    selected = _select(functions, [n for n in names if n not in pipelines] if names else None)
    table = Table("function", "framework", "artifact", "weights", "tensors", "result", "seconds")
    rows: dict[str, tuple[str, ...]] = {}
    failed: list[SlserveError] = []
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    store = ArtifactStore(artifacts)
    with Progress(*columns, console=console, transient=True) as progress:
        tasks = {f.name: progress.add_task(f"{f.name}: waiting") for f in selected}

        def step(name: str, what: str) -> None:
            progress.update(tasks[name], description=f"{name}: {what}")

        workers = max(1, min(jobs or cores(), len(selected)))
        for done in build_all(selected, artifacts, force, step, workers):
            progress.remove_task(tasks[done.name])
            if done.error is not None or done.digest is None:
                failed.append(done.error or SlserveError(f"{done.name}: the build failed"))
                if len(selected) > 1:  # a lone build's error is the command's own (below)
                    err_console.print(f"[red]{escape(done.name)}[/]: {escape(failed[-1].message)}")
                continue
            m = store.open(done.digest).manifest
            rows[done.name] = (
                done.name,
                m.spec.framework.value,
                done.digest[:12],
                f"{m.weight_bytes / 1e6:,.1f} MB",
                str(len(m.tensors)),
                "cached" if done.cached else "built",
                f"{done.seconds:.1f}",
            )
            console.print(f"{done.name}: {rows[done.name][5]} in {done.seconds:.1f} s", highlight=False)
    for fdef in selected:
        if fdef.name in rows:
            table.add_row(*rows[fdef.name])
    print_table(console, table)
    pipelines_failed = _build_pipelines(functions, pipelines or None, store) if pipelines or not names else 0
    if pipelines_failed:
        failed.append(BuildError(f"{pipelines_failed} pipeline(s) failed their check"))
    if len(selected) == 1 and failed:
        raise failed[0]
    if failed:
        missing = ", ".join(sorted(f.name for f in selected if f.name not in rows))
        raise BuildError(f"{len(failed)} of {len(selected)} functions failed to build ({missing}); see above")


def init(
    name: Annotated[str, typer.Argument(help="Function name (lowercase, digits, '-')")],
    framework: Annotated[str, typer.Option(help="torch (writes model.py) or onnx (writes export.py)")] = "torch",
    functions: FunctionsDir = DEFAULT_FUNCTIONS,
) -> None:
    """Start a function in functions/NAME/: a commented function.toml and starter code that builds and serves
    as it is; replace the code with your model's, and keep its signature table in step."""
    from slserve.starters import FRAMEWORKS, code_template, function_template

    if framework not in FRAMEWORKS:
        raise SlserveError(f"--framework {framework!r}: choose one of {', '.join(FRAMEWORKS)}")
    target = functions / name
    if (target / SPEC_FILENAME).exists():
        raise SlserveError(f"{target / SPEC_FILENAME} exists already; edit it or pick another name")
    code_name, code = code_template(name, framework)
    if (target / code_name).exists():
        raise SlserveError(f"{target / code_name} exists already; move it away or pick another name")
    target.mkdir(parents=True, exist_ok=True)
    (target / SPEC_FILENAME).write_text(function_template(name, framework))
    (target / code_name).write_text(code)
    load_function(target)  # the template itself must parse
    console.print(
        f"wrote {target / SPEC_FILENAME} and {target / code_name} (a working starter); put your model in "
        f"{code_name}, keep its signature table in step, then `slserve build {name}`: a running gateway serves "
        "it at once",
        markup=False,
    )


def inspect(name: str, artifacts: ArtifactsDir = DEFAULT_ARTIFACTS) -> None:
    """Print a function's current manifest."""
    artifact = ArtifactStore(artifacts).current(name)
    console.print_json(artifact.manifest.model_dump_json())


def verify(
    names: Annotated[list[str] | None, typer.Argument(help="Functions (default: all built)")] = None,
    artifacts: ArtifactsDir = DEFAULT_ARTIFACTS,
    full: Annotated[bool, typer.Option(help="Re-hash every blob, ignoring verification markers")] = False,
) -> None:
    """Check every blob of the functions' artifacts against its sha256."""
    store = ArtifactStore(artifacts)
    for name in names or store.functions():
        artifact = store.current(name)
        artifact.verify(full=full)
        console.print(f"{name}: {artifact.digest[:12]} ok ({len(artifact.manifest.unique_blobs())} blobs)")


def invoke(
    names: Annotated[list[str] | None, typer.Argument(help="Functions (default: all built)")] = None,
    inputs: Annotated[str | None, typer.Option("--input", help='JSON object, e.g. {"text": ["hi"]}')] = None,
    artifacts: ArtifactsDir = DEFAULT_ARTIFACTS,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: from the spec)")] = None,
) -> None:
    """Load functions in this process and run one inference each (the signature's example input by default)."""
    from slserve.runtime import example_inputs, load_runtime
    from slserve.runtime.tensors import NUMPY_OF

    store = ArtifactStore(artifacts)
    for name in names or store.functions():
        artifact = store.current(name)
        spec = artifact.manifest.spec
        started = time.perf_counter()
        runtime = load_runtime(artifact, device=device)
        loaded = time.perf_counter()
        if inputs:
            raw = json.loads(inputs)
            types = {t.name: NUMPY_OF[t.datatype] for t in spec.signature.inputs}
            feeds = {k: np.asarray(v, dtype=types.get(k)) for k, v in raw.items()}
        else:
            feeds = example_inputs(spec.signature)
        outputs = runtime.infer(feeds)
        done = time.perf_counter()
        shown = {k: _preview(v) for k, v in outputs.items()}
        console.print(
            f"[bold]{name}[/] ({spec.framework.value} on {runtime.device}): load {1e3 * (loaded - started):.0f} ms, "
            f"first call {1e3 * (done - loaded):.0f} ms -> {shown}"
        )


def _preview(arr: np.ndarray) -> str:
    flat = arr.reshape(-1)
    head = ", ".join(f"{v:.4g}" if isinstance(v, float | np.floating) else str(v) for v in flat[:4])
    return f"{arr.dtype}{list(arr.shape)} [{head}{', …' if flat.size > 4 else ''}]"
