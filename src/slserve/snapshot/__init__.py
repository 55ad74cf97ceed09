"""The load-optimized weight format: content-addressed, page-aligned, checksummed, pickle-free blobs."""

from slserve.snapshot.blobs import BlobStore
from slserve.snapshot.manifest import FORMAT, BuildInfo, FileEntry, Manifest, TensorEntry
from slserve.snapshot.store import Artifact, ArtifactStore
from slserve.snapshot.writer import write_tensors

__all__ = [
    "FORMAT",
    "Artifact",
    "ArtifactStore",
    "BlobStore",
    "BuildInfo",
    "FileEntry",
    "Manifest",
    "TensorEntry",
    "write_tensors",
]
