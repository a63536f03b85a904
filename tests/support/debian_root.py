# SPDX-License-Identifier: Apache-2.0
"""Debian 12 roots for tests, built once with mmdebstrap and cached as tarballs.

:func:`debian_root_tarball` returns ``.cache/debian-root/<suite>-<variant>-<name>-<key>.tar``
where ``key`` hashes everything that decides the root's contents (suite, variant, the sorted
package list, mirror, architecture and :data:`FORMAT`); change any of them and a new tarball
is built, the old one is simply no longer used. A build writes to a temporary name in the
cache directory and renames it when mmdebstrap succeeded, so a tarball under its final name
is always complete; a per-key lock makes parallel test runs wait for one build instead of
all building the same root.

:func:`debian_root_tree` extracts such a tarball once, next to it (``<tarball>.tree``), for
targets that put a writable overlay over it instead of extracting 250 MB every time.

Cold: ~1 min for minbase + python3, about as much for :data:`ROLE_TEST_PACKAGES` (network
bound). Warm: a stat() call. Extracting a tree: 2-10 s once (sys time, so load-dependent).
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO / ".cache" / "debian-root"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Bump to rebuild every cached root (e.g. when the way mmdebstrap is called changes).
FORMAT = 2

# What role tests need in the target: Ansible's interpreter and its apt module, sshd for the
# live SSH target, ip/ss for testinfra's network checks, sudo for become, systemd only for
# systemctl and unit files (it never runs as PID 1 in these roots), CA certificates for HTTPS.
ROLE_TEST_PACKAGES = ("python3", "python3-apt", "openssh-server", "iproute2", "sudo",
                      "systemd", "ca-certificates")


def debian_arch() -> str:
    """The host's Debian architecture (amd64, arm64, ...)."""
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def root_spec(packages: Iterable[str] = (), *, suite: str = "bookworm",
              variant: str = "minbase", mirror: str = DEFAULT_MIRROR,
              arch: str | None = None) -> dict[str, object]:
    """The inputs that decide a root's contents, normalised (packages sorted, deduplicated)."""
    names = sorted(set(packages))
    for name in names:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", name):
            raise ValueError(f"not a Debian package name: {name!r}")
    return {"suite": suite, "variant": variant, "packages": names, "mirror": mirror,
            "arch": arch or debian_arch(), "format": FORMAT}


def cache_key(spec: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def debian_root_tarball(packages: Iterable[str] = (), *, name: str = "root",
                        suite: str = "bookworm", variant: str = "minbase",
                        mirror: str = DEFAULT_MIRROR, arch: str | None = None,
                        cache_dir: Path = CACHE_DIR, timeout: float = 1800) -> Path:
    """A ``variant`` root of ``suite`` with ``packages`` added, as an uncompressed tarball
    (device nodes included, owners numeric root), built on first use and cached.

    ``name`` only labels the file for people; it is not part of the key. Skips the calling
    test unless run as root with mmdebstrap installed (a cached tarball still needs root to
    be extracted with its device nodes and owners)."""
    if os.geteuid() != 0:
        pytest.skip("a Debian root needs root (chroot, device nodes, owners)")
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise ValueError(f"name must be a plain file-name part: {name!r}")
    spec = root_spec(packages, suite=suite, variant=variant, mirror=mirror, arch=arch)
    key = cache_key(spec)
    tarball = cache_dir / f"{suite}-{variant}-{name}-{key}.tar"
    if tarball.is_file():
        return tarball
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        pytest.skip("mmdebstrap not installed (apt-get install mmdebstrap)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.is_file():  # built by whoever held the lock before us
            return tarball
        # Holding the lock, any partial file of this key is from an interrupted build.
        for stale in cache_dir.glob(f".{tarball.name}.*.part"):
            stale.unlink(missing_ok=True)
        partial = cache_dir / f".{tarball.name}.{os.getpid()}.part"
        command = [mmdebstrap, "--quiet", "--format=tar", f"--variant={variant}",
                   f"--architectures={spec['arch']}"]
        if spec["packages"]:
            command.append(f"--include={','.join(spec['packages'])}")  # type: ignore[arg-type]
        command += [suite, str(partial), mirror]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            if result.returncode != 0:
                raise RuntimeError(f"mmdebstrap exited {result.returncode}:\n"
                                   f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
            partial.chmod(0o644)
            partial.replace(tarball)
        finally:
            partial.unlink(missing_ok=True)
    return tarball


def debian_root_tree(tarball: Path) -> Path:
    """``tarball`` extracted once (owners numeric, device nodes, modes) into
    ``<tarball>.tree``: a read-only lower layer for overlays. Never write into it."""
    tree = tarball.with_name(tarball.name + ".tree")
    if tree.is_dir():
        return tree
    with open(tarball.with_name(f".{tarball.name}.tree.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tree.is_dir():
            return tree
        for stale in tarball.parent.glob(f".{tarball.name}.tree.*.part"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = tarball.with_name(f".{tarball.name}.tree.{os.getpid()}.part")
        try:
            partial.mkdir()
            subprocess.run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(partial)],
                           check=True, capture_output=True, timeout=900)
            partial.rename(tree)
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
    return tree


def role_test_tarball(extra: Iterable[str] = ()) -> Path:
    """The root role tests start from: :data:`ROLE_TEST_PACKAGES` plus ``extra``."""
    return debian_root_tarball([*ROLE_TEST_PACKAGES, *extra], name="roletest")


# A bootable role-test root (QemuTarget): a kernel (its initramfs, at MODULES=most, has
# virtio and ext4), systemd as init, udev for devices.
QEMU_PACKAGES = ("linux-image-amd64", "initramfs-tools", "systemd-sysv", "udev", "kmod")


def qemu_test_tarball(extra: Iterable[str] = ()) -> Path:
    """:func:`role_test_tarball` made bootable: plus :data:`QEMU_PACKAGES` and ``extra``."""
    return debian_root_tarball([*ROLE_TEST_PACKAGES, *QEMU_PACKAGES, *extra], name="qemu")
