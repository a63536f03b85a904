# SPDX-License-Identifier: Apache-2.0
"""Build directories that appear only when complete: the lock that lets one build at a time
use a cache, and the clean-up of what killed builds left.

A build works in ``.build-<what>-<pid>`` beside its destination and renames it into place when
done; the PID names the process that owns it, so a later build can tell a dead build's
leftovers from a live one's.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (made if missing) for the ``with`` block; the
    kernel drops it if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def clean_stale_builds(directory: Path, owner: int) -> None:
    """Remove the ``.build-*-<pid>`` directories in ``directory`` of processes that are gone,
    and ``owner``'s own (an earlier build of this process that failed)."""
    if not directory.is_dir():
        return
    for leftover in directory.glob(".build-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        alive = pid.isdigit() and int(pid) != owner and Path(f"/proc/{pid}").exists()
        if not alive:
            shutil.rmtree(leftover, ignore_errors=True)
