"""The build's drift reference: the model's profile (`slserve.drift.profile`) on its calibration inputs, kept in
the artifact as `drift/reference.json`."""

from __future__ import annotations

import numpy as np
import orjson

from slserve.drift.profile import Profile
from slserve.errors import SpecError
from slserve.runtime.base import import_ref, load_runtime
from slserve.runtime.code import folder_code
from slserve.runtime.tensors import check_inputs
from slserve.snapshot import Artifact, FileEntry
from slserve.spec import FunctionDef

REFERENCE = "drift/reference.json"
CHUNK = 32  # rows per model call: calibration sets may be larger than a call should be


def calibration(fdef: FunctionDef) -> dict[str, np.ndarray]:
    from slserve.build.agreement import calibration_inputs

    ref = fdef.spec.drift.calibration
    if ref is None:
        return calibration_inputs(fdef.spec.signature)
    inputs = import_ref(ref, folder_code(fdef.name, fdef.directory))()
    if not isinstance(inputs, dict):
        raise SpecError(f"{ref} returned {type(inputs).__name__}, expected a dict of input name -> array")
    try:
        return check_inputs(fdef.spec.signature, inputs)
    except Exception as e:
        raise SpecError(f"{ref}: its inputs do not fit the signature: {e}") from None


def with_drift_reference(fdef: FunctionDef, artifact: Artifact) -> Artifact:
    inputs = calibration(fdef)
    runtime = load_runtime(artifact)
    rows = len(next(iter(inputs.values())))
    profile = Profile.empty(fdef.spec.signature)
    for start in range(0, rows, CHUNK):
        chunk = {k: v[start : start + CHUNK] for k, v in inputs.items()}
        profile.observe(chunk, runtime.infer(chunk))
    digest, size = artifact.store.blobs.put_bytes(orjson.dumps(profile.to_dict()))
    files = {**artifact.manifest.files, REFERENCE: FileEntry(digest=digest, size=size)}
    return artifact.store.save(artifact.manifest.model_copy(update={"files": files}))


def reference_of(artifact: Artifact) -> Profile | None:
    entry = artifact.manifest.files.get(REFERENCE)
    if entry is None:
        return None
    data = artifact.store.blobs.read_bytes(entry.digest, entry.size, f"{artifact.name}: {REFERENCE}")
    return Profile.from_dict(orjson.loads(data))
