"""Writing weights into the blob store."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from slserve.snapshot.blobs import BlobStore
from slserve.snapshot.manifest import NUMPY_DTYPES, TensorEntry

_BY_NUMPY = {v: k for k, v in NUMPY_DTYPES.items() if k != "bfloat16"}


def write_tensors(
    blobs: BlobStore, arrays: Mapping[str, np.ndarray], dtypes: Mapping[str, str] | None = None
) -> dict[str, TensorEntry]:
    """Store each array's bytes as one blob. `dtypes` overrides the dtype name of arrays whose numpy dtype only
    carries their bytes (bfloat16 as uint16)."""
    entries: dict[str, TensorEntry] = {}
    for name, arr in arrays.items():
        dtype = (dtypes or {}).get(name) or _BY_NUMPY.get(arr.dtype.newbyteorder("<"))
        if dtype is None:
            raise TypeError(f"tensor {name!r}: dtype {arr.dtype} has no snapshot dtype")
        data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)
        digest, size = blobs.put_bytes(data.reshape(-1).view(np.uint8).data)
        entries[name] = TensorEntry(dtype=dtype, shape=list(arr.shape), digest=digest, nbytes=size)
    return entries
