"""A stand-in with the Modal volume client's interface (listdir raising modal's NotFoundError on a new volume,
batch_upload's put_file) over a local folder, so that what `fill_volume` sends lands where a test can open it as
the container opens the mounted volume."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from modal.exception import NotFoundError
from modal.types import FileEntry, FileEntryType


class FolderVolume:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.puts: list[str] = []

    def listdir(self, path: str, *, recursive: bool = False) -> list[FileEntry]:
        folder = self.root / path
        if not folder.is_dir():
            raise NotFoundError(f"No such file or directory: {path}")
        found = folder.rglob("*") if recursive else folder.iterdir()
        return [
            FileEntry(
                str(p.relative_to(self.root)),
                FileEntryType.DIRECTORY if p.is_dir() else FileEntryType.FILE,
                0,
                p.stat().st_size,
            )
            for p in found
        ]

    @contextmanager
    def batch_upload(self, force: bool = False) -> Iterator[FolderVolume]:
        yield self

    def put_file(self, local_file: Path, remote_path: str) -> None:
        target = self.root / remote_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local_file, target)
        self.puts.append(remote_path)
