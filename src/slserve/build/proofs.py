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
import json
import os
from pathlib import Path

from slserve.snapshot import Artifact

Floors = dict[str, int]  # feed shape key -> the smallest call size proven exact
Grants = dict[str, dict[str, int]]  # feed shape key -> call size -> the most threads proven exact


def batch_floors(artifact: Artifact) -> tuple[dict[str, Floors], dict[str, Grants]]:
    """Per device this host can run the function on (the CPU, and CUDA for a function that names a GPU on a host
    that has one: kernels differ per device), prove the shapes the processor says it produces (`feed_examples()`,
    e.g. one per text length bucket), or else those of the calibration inputs."""
    from slserve.build.agreement import calibration_inputs
    from slserve.host import cores
    from slserve.runtime.base import load_runtime
    from slserve.runtime.batching import prove_shapes, prove_threads, shape_key

    spec = artifact.manifest.spec
    default = load_runtime(artifact)  # CUDA for a GPU function on a GPU host, else the CPU
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
        # More threads are proven on the CPU only, up to this host's cores (a GPU call's threads do not compute).
        most = cores() if device == "cpu" else 0
        shapes = sorted({shape_key(e) for e in examples})
        cache = artifact.store.root / "proofs" / proof_key(artifact, device, shapes, most)
        if cache.is_file():
            proven = json.loads(cache.read_text())
            floors[device], grants[device] = proven["floors"], proven["threads"]
            continue
        floors[device] = prove_shapes(runtime, spec.batching.max_batch_size, examples)
        grants[device] = prove_threads(runtime, spec.batching.max_batch_size, examples, floors[device], most)
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
        "max_batch_size": spec.batching.max_batch_size,
        "libraries": m.build.libraries,
        "python": m.build.python,
        "proof": hashlib.sha256(Path(proof.__file__).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(structure, sort_keys=True).encode()).hexdigest()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # builds run side by side
    tmp.write_text(text)
    tmp.replace(path)
