"""A content-addressed blob store: every file of every artifact, named by the sha256 of its bytes.

One blob per tensor means each tensor starts at file offset 0 (page-aligned, so it maps without copying), and a
tensor shared by two versions of a model is stored once. Blobs are written atomically and made read-only.

Hashing a GB takes seconds on these machines, so a blob is hashed in full once per machine; a marker keyed by
the file's (size, mtime, inode) records that, and any later write to the file (a flipped byte, a truncation)
changes its stat and forces a full re-check before it is served again.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from slserve.errors import ArtifactCorrupt, ArtifactNotFound

_CHUNK = 8 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _stat_key(st: os.stat_result) -> str:
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "blobs" / "sha256"
        self._verified = root / "verified"

    def path(self, digest: str) -> Path:
        return self._blobs / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    # --- writing ---------------------------------------------------------------------------------------------

    def put_bytes(self, data: bytes | memoryview) -> tuple[str, int]:
        """Store `data`; returns (digest, size). Storing bytes that exist already writes nothing."""
        view = memoryview(data).cast("B")
        digest = hashlib.sha256(view).hexdigest()
        if not self.has(digest):
            self._write(digest, [view])
        return digest, view.nbytes

    def put_file(self, source: Path) -> tuple[str, int]:
        digest = sha256_file(source)
        if not self.has(digest):
            with source.open("rb") as f:
                self._write(digest, iter(lambda: f.read(_CHUNK), b""))
        return digest, source.stat().st_size

    def _write(self, digest: str, chunks: Iterable[bytes | memoryview]) -> None:
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._mark_verified(digest, target.stat())

    # --- reading ---------------------------------------------------------------------------------------------

    def verify(self, digest: str, size: int, what: str) -> Path:
        """Return the blob's path once its bytes are known to hash to `digest`; `what` names it in errors."""
        path = self.path(digest)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ArtifactNotFound(f"{what}: blob {path} is missing; rebuild with `slserve build`") from None
        if st.st_size != size:
            raise ArtifactCorrupt(
                f"{what}: {path} is {st.st_size} bytes, expected {size} (truncated or overwritten); "
                "delete it and rebuild with `slserve build`"
            )
        if self._marker(digest) == _stat_key(st):
            return path
        actual = sha256_file(path)
        if actual != digest:
            raise ArtifactCorrupt(
                f"{what}: {path} fails its checksum (sha256 {actual[:16]}…, expected {digest[:16]}…); "
                "the file is corrupt: delete it and rebuild with `slserve build`"
            )
        self._mark_verified(digest, st)
        return path

    def map(self, digest: str, size: int, what: str) -> mmap.mmap:
        """Map a verified blob copy-on-write: pages are shared with the page cache and every other process
        mapping the same blob, and the model can never write through to the file.

        Pages fault in lazily as the model reads them. MAP_POPULATE would fault them in for writing, which on
        a private mapping copies every page (RESULTS.md: snapshot restore).
        """
        path = self.verify(digest, size, what)
        with path.open("rb") as f:
            if size == 0:
                return mmap.mmap(-1, 1)  # an empty tensor: nothing to map, any buffer will do
            return mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)

    def read_bytes(self, digest: str, size: int, what: str) -> bytes:
        return self.verify(digest, size, what).read_bytes()

    # --- verification markers --------------------------------------------------------------------------------

    def _marker(self, digest: str) -> str | None:
        try:
            return (self._verified / digest).read_text()
        except FileNotFoundError:
            return None

    def _mark_verified(self, digest: str, st: os.stat_result) -> None:
        try:
            self._verified.mkdir(parents=True, exist_ok=True)
            tmp = self._verified / f".{digest}.{os.getpid()}"
            tmp.write_text(_stat_key(st))
            os.replace(tmp, self._verified / digest)
        except OSError:  # a read-only store (a Lambda package): each process hashes what it uses, once
            pass
