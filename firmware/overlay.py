# SPDX-License-Identifier: Apache-2.0
"""The host layer of a firmware image: the host's overlay, written from its description and
normalised.

The firmware role renders the host's files on the controller (probe.conf, SSH keys, first-boot
scripts) and names the ones to copy (the host's credentials) in one overlay description
(``probeforge-overlay 1``, JSON); ``write_overlay`` turns it into the overlay directory. Files
arrive with whatever owner, mode and time the controller gave them; the layer fixes all of
them, so the same inventory gives the same image on any machine, and the device contract's
modes hold (``certs/`` 0700, the key 0600, first-boot scripts executable).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from firmware import FirmwareError

# Paths of the device contract whose modes are not the plain 0644/0755.
PRIVATE_DIRS = ("etc/mplane/certs", "etc/dropbear")
PRIVATE_FILES = ("etc/mplane/certs/probe.key",)
# First-boot scripts are run, whatever mode their source had.
EXECUTABLE_DIRS = ("etc/uci-defaults",)
RELEASE = "etc/probeforge-release"
SPEC_FORMAT = "probeforge-overlay 1"


def _mode(relative: str, is_dir: bool, executable: bool) -> int:
    if is_dir:
        return 0o700 if relative in PRIVATE_DIRS else 0o755
    if relative in PRIVATE_FILES:
        return 0o600
    if executable or PurePosixPath(relative).parent.as_posix() in EXECUTABLE_DIRS:
        return 0o755
    return 0o644


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


def _spec_path(relative: object) -> str:
    path = PurePosixPath(str(relative))
    if (not isinstance(relative, str) or not relative or path.is_absolute()
            or any(part in ("", ".", "..") for part in relative.split("/"))):
        raise FirmwareError(f"overlay description: {relative!r} is not a relative path inside "
                            "the overlay (no '..', no leading '/')")
    return path.as_posix()


def spec_files(spec: Mapping[str, Any]) -> dict[str, bytes]:
    """The bytes of every file an overlay description (``probeforge-overlay 1``) names, by
    path relative to the overlay: ``content`` maps paths to rendered text, ``source`` to
    files on the controller (the host's credentials: named by path, they never pass through
    Ansible's results)."""
    if not isinstance(spec, Mapping) or spec.get("format") != SPEC_FORMAT:
        raise FirmwareError(f"overlay description: not {SPEC_FORMAT!r} (a JSON object with "
                            "\"format\", \"content\" and \"source\"): render it with "
                            "roles/firmware")
    content, sources = spec.get("content", {}), spec.get("source", {})
    if not isinstance(content, Mapping) or not isinstance(sources, Mapping):
        raise FirmwareError("overlay description: \"content\" and \"source\" must map paths "
                            "to text and to files on the controller")
    files: dict[str, bytes] = {}
    for relative, text in content.items():
        if not isinstance(text, str):
            raise FirmwareError(f"overlay description: the content of {relative!r} is not text")
        files[_spec_path(relative)] = text.encode()
    for relative, source in sources.items():
        path = _spec_path(relative)
        if path in files:
            raise FirmwareError(f"overlay description: {path} is both rendered and copied")
        try:
            files[path] = Path(str(source)).read_bytes()
        except OSError as exc:
            raise FirmwareError(f"overlay description: {path}: cannot read {source} "
                                f"({exc.strerror}); run playbooks/pki.yml for the host's "
                                "credentials") from exc
    return files


def _tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """(mode, bytes or None for a directory) of everything below ``root``."""
    return {path.relative_to(root).as_posix():
            (stat.S_IMODE(path.lstat().st_mode), None if path.is_dir() else path.read_bytes())
            for path in root.rglob("*")}


def write_overlay(spec: Mapping[str, Any], overlay: Path) -> bool:
    """Make ``overlay`` hold exactly the files ``spec`` describes, with the device contract's
    modes. The new tree is complete before it replaces the old one, and an overlay that
    already matches is left untouched. Returns whether the overlay changed."""
    files = spec_files(spec)
    overlay.parent.mkdir(parents=True, exist_ok=True)
    # The host's private key passes through here: nothing but the owner may read.
    work = Path(tempfile.mkdtemp(prefix=f".{overlay.name}.", dir=overlay.parent))
    try:
        fresh = work / "overlay"
        for relative, data in sorted(files.items()):
            target = fresh / relative
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            except OSError as exc:  # a path that another one needs as a directory
                raise FirmwareError(f"overlay description: cannot write {relative} "
                                    f"({exc.strerror}): a file and a directory of the same "
                                    "name?") from exc
            target.chmod(_mode(relative, False, False))
        for directory in sorted(p for p in fresh.rglob("*") if p.is_dir()):
            directory.chmod(_mode(directory.relative_to(fresh).as_posix(), True, True))
        fresh.mkdir(exist_ok=True)
        fresh.chmod(0o700)
        overlay_files(fresh)  # refuses an overlay without probe.conf or the key
        if overlay.is_dir() and not overlay.is_symlink() \
                and stat.S_IMODE(overlay.stat().st_mode) == 0o700 \
                and _tree(overlay) == _tree(fresh):
            return False
        if overlay.exists() or overlay.is_symlink():
            overlay.rename(work / "previous")
        fresh.rename(overlay)
        return True
    finally:
        shutil.rmtree(work, ignore_errors=True)
