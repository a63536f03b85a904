# SPDX-License-Identifier: Apache-2.0
"""A host-side cache of .debs and package lists for throw-away roots, so that only the first
run of a role test downloads from the Debian archive."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

_INSIDE = (("archives", "var/cache/apt/archives"), ("lists", "var/lib/apt/lists"))


@contextlib.contextmanager
def apt_cache_in(cache: Path, root: Path) -> Iterator[None]:
    """Bind ``cache`` into ``root`` while the role runs; unmounted on leaving."""
    mounted: list[Path] = []
    try:
        for name, inside in _INSIDE:
            host_dir = cache / name
            (host_dir / "partial").mkdir(parents=True, exist_ok=True)
            point = root / inside
            point.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "--bind", host_dir, point], check=True)
            mounted.append(point)
        yield
    finally:
        for point in reversed(mounted):
            if subprocess.run(["umount", point], capture_output=True).returncode:
                subprocess.run(["umount", "--lazy", point], capture_output=True)


def seed_apt_cache(cache: Path, root: Path) -> None:
    """Copy the cache into a root whose mounts are private (the SSH target)."""
    for name, inside in _INSIDE:
        host_dir = cache / name
        if host_dir.is_dir():
            shutil.copytree(host_dir, root / inside, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("lock", "partial"))


def dpkg_unsafe_io(root: Path) -> None:
    """No fsync per unpacked file in a throw-away root: dpkg is several times faster there."""
    (root / "etc/dpkg/dpkg.cfg.d/probeforge-test-unsafe-io").write_text("force-unsafe-io\n")
