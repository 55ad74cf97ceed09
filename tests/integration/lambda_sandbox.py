"""Lambda's execution environment as a package meets it: a clean CPython 3.12 (no site-packages: only the
standard library), the package as the task root and Lambda's own runtime folder (the runtime client and boto3)
on its path, both read-only, HOME unwritable, and no variable inherited from the test's process. What the
package did not bring, it cannot import; what it writes outside /tmp fails.

Read-only is enforced by the kernel: as root (CI), each folder is bind-mounted read-only in a mount namespace of
the environment's own (`unshare -m`), since permission bits do not stop root; as another user, by permissions.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from slserve.aws.package import install_wheels

# The runtime client Lambda's managed Python runtime carries, and the AWS SDK it provides (`package.PROVIDED`).
LAMBDA_RUNTIME = ["awslambdaric==4.2.2", "boto3"]


def python312() -> str | None:
    """A CPython 3.12 interpreter (pyenv's own binary first: its shim answers even when 3.12 is not active)."""
    builds = sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.12*/bin/python3.12")))
    return builds[-1] if builds else shutil.which("python3.12")


def _can_bind_read_only(probe: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    script = f"mount --bind -o ro {probe} {probe} && ! touch {probe}/written 2>/dev/null"
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script]).returncode == 0


def read_only_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    for path in [target, *target.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return target


@dataclass(frozen=True)
class Sandbox:
    python: str
    task: Path  # LAMBDA_TASK_ROOT (/var/task): the package
    runtime: Path  # Lambda's runtime folder (/var/runtime): the runtime client and boto3
    home: Path
    bind: bool  # read-only by bind mounts (root), or by permissions

    @classmethod
    def make(cls, package: Path, runtime: Path, root: Path) -> Sandbox:
        """`package` copied read-only under `root`; `runtime` from `lambda_runtime`."""
        python = python312()
        if python is None:
            pytest.skip("no CPython 3.12 here: Lambda's wheels cannot run")
        root.mkdir(parents=True, exist_ok=True)
        home = root / "home"
        home.mkdir()
        home.chmod(0o555)
        bind = _can_bind_read_only(home)
        if not bind and os.geteuid() == 0:
            pytest.skip("running as root without `unshare -m`: nothing here could make the package read-only")
        return cls(python, read_only_copy(package, root / "task"), runtime, home, bind)

    def base_env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(self.home),
            "PYTHONPATH": f"{self.task}:{self.runtime}",
            "LAMBDA_TASK_ROOT": str(self.task),
            "LAMBDA_RUNTIME_DIR": str(self.runtime),
            "TZ": ":UTC",
        }

    def command(self, handler: str) -> list[str]:
        run = [self.python, "-S", "-m", "awslambdaric", handler]  # -S: no site-packages, no user site
        if not self.bind:
            return run
        mounts = " && ".join(f"mount --bind -o ro {p} {p}" for p in (self.task, self.runtime, self.home))
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{mounts} && exec {shlex.join(run)}"]


def lambda_runtime(target: Path) -> Path:
    """Lambda's runtime folder: its runtime client and boto3, as Lambda's wheels for CPython 3.12."""
    install_wheels(target, LAMBDA_RUNTIME, "Lambda's runtime", slim=False)
    for path in [target, *target.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return target
