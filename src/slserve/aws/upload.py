"""Artifacts to S3, content-addressed: `blobs/sha256/<digest>` as in the local store, and `refs/<function>`.

A blob already in the bucket is not sent again (its key is its content's sha256). Every upload asks S3 to check
a SHA-256 checksum on arrival; large blobs go in parts (boto3's transfer manager), each part checked as it
arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slserve.snapshot import ArtifactStore

PART_BYTES = 64 * 1024 * 1024


@dataclass
class Uploaded:
    sent: int = 0  # blobs
    sent_bytes: int = 0
    skipped: int = 0  # already there


def blob_key(digest: str) -> str:
    return f"blobs/sha256/{digest}"


def _present(s3: Any, bucket: str, digest: str, size: int) -> bool:
    """Already there: the key is the content's sha256, and every upload had S3 check its SHA-256 on arrival, so
    an object of the right size under that key is that content."""
    try:
        head = s3.head_object(Bucket=bucket, Key=blob_key(digest))
    except s3.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return int(head["ContentLength"]) == size


def upload(
    s3: Any,
    bucket: str,
    store: ArtifactStore,
    function: str,
    digest: str,
    progress: Callable[[int], None] = lambda _: None,
    part_bytes: int = PART_BYTES,
) -> Uploaded:
    """Send the artifact's manifest and blobs that the bucket lacks, then point `refs/<function>` at it."""
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=part_bytes, multipart_chunksize=part_bytes)
    artifact = store.open(digest)
    artifact.verify()  # nothing corrupt leaves this machine
    done = Uploaded()
    for blob in [digest, *artifact.manifest.unique_blobs()]:
        path = store.blobs.path(blob)
        if _present(s3, bucket, blob, path.stat().st_size):
            done.skipped += 1
            continue
        s3.upload_file(
            str(path),
            bucket,
            blob_key(blob),
            ExtraArgs={"ChecksumAlgorithm": "SHA256"},
            Config=config,
            Callback=progress,
        )
        done.sent += 1
        done.sent_bytes += path.stat().st_size
    s3.put_object(Bucket=bucket, Key=f"refs/{function}", Body=digest.encode(), ChecksumAlgorithm="SHA256")
    return done
