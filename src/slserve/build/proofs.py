"""The build's batching proof, per device, and its cache.

A proof says, per feed shape, from which call size on the model's kernels give every row bit-identical results
(`runtime.batching.prove_shapes`). Which call sizes agree depends on the kernels (shapes, threads, device,
library versions) and, at the margin, on the values: the samples' classifier proves a floor of 2 with its v1
weights and of 1 with its retrained v2 weights, on the same graph. So a proof is reused only for the same model,
weights included: a rebuild that changes nothing the kernels see (slserve's own code, a deployment setting,
`--force`) skips it. The key: the graph files, the model code, every tensor's name, shape, dtype and digest, the
feed shapes, the device, the thread count, the largest call, the library versions and the proof's own code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from slserve.runtime.base import Runtime
from slserve.snapshot import Artifact

# More threads are proven for calls of up to this many rows: a call gets them only while the host has idle cores,
# which under load (where calls are larger) it rarely has; the larger sizes' proofs doubled the samples' build.
THREADED_CALLS = 2
Floors = dict[str, int]  # feed shape key -> the smallest call size proven exact
Grants = dict[str, dict[str, int]]  # feed shape key -> call size -> the most threads proven exact


def batch_floors(artifact: Artifact, default: Runtime) -> tuple[dict[str, Floors], dict[str, Grants]]:
    """Per device this host can run the function on (the CPU, and CUDA for a function that names a GPU on a host
    that has one: kernels differ per device), prove the shapes the processor says it produces (`feed_examples()`,
    e.g. one per text length bucket), or else those of the calibration inputs. `default`: the artifact's runtime
    on the device it would serve on here (the build loads it once for all its checks)."""
    from slserve.build.agreement import calibration_inputs
    from slserve.host import cores
    from slserve.runtime.base import load_runtime
    from slserve.runtime.batching import prove_shapes, prove_threads, shape_key

    spec = artifact.manifest.spec
    runtimes = {default.device: default}
    if "cpu" not in runtimes:
        runtimes["cpu"] = load_runtime(artifact, device="cpu")
    floors: dict[str, Floors] = {}
    grants: dict[str, Grants] = {}
    for device, runtime in runtimes.items():
        examples = runtime.feed_examples()
        if not examples:
            inputs = calibration_inputs(spec.signature)
            rows = len(next(iter(inputs.values())))
            examples = [runtime.prepare({k: v[i : i + 1] for k, v in inputs.items()}) for i in range(rows)]
        # More threads are proven on the CPU only, up to this host's cores (a GPU call's threads do not compute),
        # and not for a function that names a GPU (on a host without one it runs on the CPU as a fallback).
        most = cores() if device == "cpu" and spec.resources.gpu is None else 0
        shapes = sorted({shape_key(e) for e in examples})
        cache = artifact.store.root / "proofs" / proof_key(artifact, device, shapes, most)
        if cache.is_file():
            proven = json.loads(cache.read_text())
            floors[device], grants[device] = proven["floors"], proven["threads"]
            continue
        floors[device] = prove_shapes(runtime, spec.batching.max_batch_size, examples)
        largest = min(spec.batching.max_batch_size, THREADED_CALLS)
        grants[device] = prove_threads(runtime, largest, examples, floors[device], most)
        _write(cache, json.dumps({"floors": floors[device], "threads": grants[device]}, sort_keys=True))
    return floors, {device: g for device, g in grants.items() if g}


def proof_key(artifact: Artifact, device: str, shapes: list[str], most_threads: int) -> str:
    import slserve.runtime.batching as proof

    m = artifact.manifest
    spec = m.spec
    graphs = {k: f.digest for k, f in m.files.items() if k.startswith("graph")}
    # An ONNX graph says all there is about the model's structure (not how it was exported); a torch module's
    # structure is its code.
    code = {k: d for k, d in m.build.source_files.items() if k.startswith("code/") or k.endswith(".py")}
    structure = {
        "graphs": graphs,
        "code": {} if graphs else code,
        "factory": None if graphs else spec.source.factory,
        "processor": spec.processor.factory if spec.processor else None,
        "tensors": {name: [t.shape, t.dtype, t.digest] for name, t in m.tensors.items()},
        "shapes": shapes,
        "device": device,
        "threads": spec.resources.threads,
        "most_threads": most_threads,
        "threaded_calls": THREADED_CALLS,
        "max_batch_size": spec.batching.max_batch_size,
        "libraries": m.build.libraries,
        "python": m.build.python,
        "proof": hashlib.sha256(Path(proof.__file__).read_bytes()).hexdigest(),
        # What the adapter can do (e.g. run a call on more threads) is part of what a proof found.
        "adapter": hashlib.sha256(Path(_adapter(spec.framework.value)).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(structure, sort_keys=True).encode()).hexdigest()


def _adapter(framework: str) -> str:
    """The runtime adapter's source file, without importing its framework."""
    spec = importlib.util.find_spec(f"slserve.runtime.{framework}_runtime")
    assert spec is not None and spec.origin is not None
    return spec.origin


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # builds run side by side
    tmp.write_text(text)
    tmp.replace(path)
