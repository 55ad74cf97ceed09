"""Where an artifact keeps its build's drift reference, and reading it back (the gateway does; the build writes
it: `slserve.build.reference`)."""

from __future__ import annotations

import orjson

from slserve.drift.profile import Profile
from slserve.snapshot import Artifact

REFERENCE = "drift/reference.json"


def reference_of(artifact: Artifact) -> Profile | None:
    entry = artifact.manifest.files.get(REFERENCE)
    if entry is None:
        return None
    data = artifact.store.blobs.read_bytes(entry.digest, entry.size, f"{artifact.name}: {REFERENCE}")
    return Profile.from_dict(orjson.loads(data))
