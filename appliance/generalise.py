# SPDX-License-Identifier: Apache-2.0
"""What makes a provisioned tree every host's: no SSH host keys, an empty machine-id, no
logs, caches or build leftovers, the generic host name, and a check that no private key is
left anywhere (a host's keys come from its seed disk at first boot)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from appliance import ApplianceError

# A PEM private key (armour line, then base64), or an OpenSSH one.
_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\r?\n"
                          rb"(?:[A-Za-z-]+: [^\n]*\n)*\r?\n?[A-Za-z0-9+/=]{40,}")
# Trees that hold test keys of packages (Python's test suite, Cockpit's docs), not secrets.
_KEY_SCAN_SKIP = ("proc", "sys", "dev", "run", "usr/share/doc", "usr/share/ca-certificates",
                  "usr/share/cockpit")
# Python libraries ship their test suites' keys (tornado/test/test.key).
_KEY_SCAN_SKIP_NAMES = ("site-packages", "dist-packages")
_EMPTY_DIRS = ("tmp", "var/tmp", "var/log/journal", "var/cache/apt", "var/lib/apt/lists",
               "root/.ansible", "root/.cache", "var/cache/debconf")


def generalise(tree: Path, *, hostname: str, release: str) -> None:
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # Empty, not absent: systemd writes a new one at first boot and treats it as first boot.
    (tree / "etc/machine-id").write_text("")
    dbus_id = tree / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
        dbus_id.symlink_to("/etc/machine-id")
    for rel in ("var/lib/systemd/random-seed", "var/lib/systemd/credential.secret",
                "etc/ssh/ssh_host_keys", "var/lib/probeforge/seed.done",
                "usr/sbin/policy-rc.d", "var/cache/ldconfig/aux-cache"):
        path = tree / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
    for rel in _EMPTY_DIRS:
        directory = tree / rel
        if directory.is_dir():
            for child in directory.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    if (tree / "var/lib/apt/lists").is_dir():
        (tree / "var/lib/apt/lists/partial").mkdir(mode=0o700, exist_ok=True)
    if (tree / "var/cache/apt").is_dir():
        (tree / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    for log in (tree / "var/log").rglob("*"):
        if log.is_file() and not log.is_symlink():
            log.write_bytes(b"")
    (tree / "etc/hostname").write_text(hostname + "\n")
    (tree / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
                                    "::1\tlocalhost ip6-localhost ip6-loopback\n")
    resolv = tree / "etc/resolv.conf"
    if (tree / "usr/lib/systemd/systemd-resolved").exists() or \
            (tree / "lib/systemd/systemd-resolved").exists():
        if resolv.exists() or resolv.is_symlink():
            resolv.unlink()
        resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    (tree / "etc/probeforge-release").write_text(release)
    found = private_keys(tree)
    if found:
        raise ApplianceError(f"the generic image holds private key material in /{found[0]}: "
                             "per-host secrets belong on the seed disk; remove the file or "
                             "the role task that puts it there")


def private_keys(tree: Path) -> list[str]:
    """Paths (relative) of files below ``tree`` that hold a private key."""
    skip = tuple(str(tree / s) for s in _KEY_SCAN_SKIP)
    found = []
    for directory, dirs, files in os.walk(tree):
        if directory.startswith(skip):
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if d not in _KEY_SCAN_SKIP_NAMES]
        for name in files:
            path = Path(directory) / name
            if path.is_symlink() or not path.is_file():
                continue
            try:
                size = path.stat().st_size
                if size > 1 << 20:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            if b"PRIVATE KEY-----" in data and _PRIVATE_KEY.search(data):
                found.append(str(path.relative_to(tree)))
    return sorted(found)
