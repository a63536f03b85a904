# SPDX-License-Identifier: Apache-2.0
"""The host layer of a firmware image: the host's rendered overlay, normalised.

The overlay directory is what the firmware role rendered on the controller (probe.conf, the
host's credentials, SSH keys, first-boot scripts). Its files arrive with whatever owner, mode
and time the controller gave them; the layer fixes all of them, so the same inventory gives
the same image on any machine, and the device contract's modes hold (``certs/`` 0700, the key
0600).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

from firmware import FirmwareError

# Paths of the device contract whose modes are not the plain 0644/0755.
PRIVATE_DIRS = ("etc/mplane/certs", "etc/dropbear")
PRIVATE_FILES = ("etc/mplane/certs/probe.key",)
RELEASE = "etc/probeforge-release"


def _mode(relative: str, is_dir: bool, executable: bool) -> int:
    if is_dir:
        return 0o700 if relative in PRIVATE_DIRS else 0o755
    if relative in PRIVATE_FILES:
        return 0o600
    return 0o755 if executable else 0o644


def overlay_files(overlay: Path) -> list[tuple[str, Path]]:
    """(relative path, path) of every file and directory under ``overlay``, sorted."""
    if not overlay.is_dir():
        raise FirmwareError(f"host overlay {overlay} does not exist: render it with "
                            "playbooks/firmware.yml (roles/firmware)")
    entries = []
    for path in sorted(overlay.rglob("*")):
        relative = path.relative_to(overlay).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise FirmwareError(f"{path} is not a regular file or directory: the host overlay "
                                "holds only rendered files; remove it")
        entries.append((relative, path))
    for required in ("etc/mplane/probe.conf", *PRIVATE_FILES):
        if not (overlay / required).is_file():
            raise FirmwareError(f"host overlay {overlay} lacks {required}: render it with "
                                "playbooks/firmware.yml (the probe_daemon role's overlay "
                                "entry point writes it)")
    return entries


def overlay_digest(overlay: Path) -> dict[str, str]:
    """SHA-256 of every file of the overlay (and its normalised mode), by relative path."""
    digests = {}
    for relative, path in overlay_files(overlay):
        if path.is_dir():
            continue
        mode = _mode(relative, False, bool(path.stat().st_mode & stat.S_IXUSR))
        digest = hashlib.sha256(path.read_bytes())
        digest.update(f"\0{mode:o}".encode())
        digests[relative] = digest.hexdigest()
    return digests


def stage_layer(overlay: Path, staging: Path, release: Mapping[str, str]) -> None:
    """Copy ``overlay`` into the empty directory ``staging`` with normalised modes and add
    ``/etc/probeforge-release`` (what sysupgrade and flash.yml compare after an upgrade)."""
    for relative, path in overlay_files(overlay):
        target = staging / relative
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        target.chmod(_mode(relative, False, bool(path.stat().st_mode & stat.S_IXUSR)))
    release_file = staging / RELEASE
    release_file.parent.mkdir(parents=True, exist_ok=True)
    release_file.write_text("".join(f"{key}={value}\n" for key, value in release.items()))
    for directory in [staging, *sorted(p for p in staging.rglob("*") if p.is_dir())]:
        relative = directory.relative_to(staging).as_posix()
        directory.chmod(_mode(relative, True, True))
    os.chmod(staging, 0o755)
