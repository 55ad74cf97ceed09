"""The build's drift reference: the model's profile (`slserve.drift.profile`) on its calibration inputs, kept in
the artifact (`slserve.drift.reference` reads it back)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import orjson

from slserve.drift.profile import Profile
from slserve.drift.reference import REFERENCE
from slserve.errors import SpecError
from slserve.runtime.base import Runtime, import_ref
from slserve.runtime.code import folder_code
from slserve.runtime.tensors import check_inputs
from slserve.snapshot import Artifact, FileEntry
from slserve.spec import FunctionDef

log = logging.getLogger("slserve.build")
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


def drift_reference(
    fdef: FunctionDef, artifact: Artifact, runtime: Callable[[], Runtime], report: Callable[[str], None]
) -> dict[str, FileEntry]:
    """The artifact's reference file (stored), or none when the model fails on the calibration inputs: that is
    for serving to say, as it would without a reference; the build itself goes on (and says why)."""
    inputs = calibration(fdef)
    profile = Profile.empty(fdef.spec.signature)
    try:
        model = runtime()
        rows = len(next(iter(inputs.values())))
        for start in range(0, rows, CHUNK):
            chunk = {k: v[start : start + CHUNK] for k, v in inputs.items()}
            profile.observe(chunk, model.infer(chunk))
    except Exception as e:  # the model's own failure, e.g. a model that cannot run on the host building it
        report(f"no drift reference: the model failed on the calibration inputs ({type(e).__name__}: {e})")
        log.warning("%s: no drift reference: the model failed on the calibration inputs: %s", fdef.name, e)
        return {}
    digest, size = artifact.store.blobs.put_bytes(orjson.dumps(profile.to_dict()))
    return {REFERENCE: FileEntry(digest=digest, size=size)}
