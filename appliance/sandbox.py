# SPDX-License-Identifier: Apache-2.0
"""Where a build's mounts live: a private mount namespace inside a new PID namespace.

:func:`reexec_in_sandbox` runs the build's work in ``unshare --mount --pid --fork
--kill-child`` under ``setpriv --pdeathsig KILL``: every mount of the build (the chroot's
/proc, /sys, /dev, /run, the seed's overlay, mmdebstrap's own) exists only in that namespace,
and when the build dies in any way, even SIGKILL, the kernel kills every process of the PID
namespace and so frees the mount namespace with all its mounts. The build uses no loop
devices at all (``mkfs.ext4 -d``, mtools, ``qemu-img``), so nothing else can be left.
:class:`ChrootMounts` mounts and unmounts what Ansible's chroot connection needs; inside the
sandbox its ``finally`` is a courtesy, outside it a duty.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from appliance import ApplianceError

ENV_MARK = "PROBEFORGE_APPLIANCE_SANDBOX"

_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
            ("urandom", 1, 9), ("tty", 5, 0))


def in_sandbox() -> bool:
    return os.environ.get(ENV_MARK, "").isdigit()


def owner_pid() -> int:
    """The host PID that owns this build: the process that started the sandbox (inside it,
    our own PID is 1 of the new namespace, while /proc still shows the host's PIDs)."""
    value = os.environ.get(ENV_MARK, "")
    return int(value) if value.isdigit() else os.getpid()


def sandbox_command(argv: list[str]) -> list[str]:
    """``argv`` wrapped so that it runs in its own mount and PID namespace and dies with us."""
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            raise ApplianceError(f"{tool} is not installed: apt-get install util-linux")
    return ["setpriv", "--pdeathsig", "KILL", "unshare", "--mount", "--propagation",
            "private", "--pid", "--fork", "--kill-child=SIGKILL", "--", *argv]


def reexec_in_sandbox(argv: list[str]) -> int:
    """Run ``python -m appliance argv`` in the sandbox; its exit code. Ctrl-C and SIGTERM
    reach it through the process group (SIGTERM to us alone kills it by the death signal)."""
    if os.geteuid() != 0:
        raise ApplianceError("building the appliance needs root (mmdebstrap, chroot, mounts): "
                             "run it as root or with sudo")
    env = {**os.environ, ENV_MARK: str(os.getpid())}
    command = sandbox_command([sys.executable, "-m", "appliance", *argv])
    proc = subprocess.Popen(command, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return proc.wait()


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(path: Path, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    prefix = str(Path(path).resolve()).rstrip("/")
    with open(mountinfo) as table:
        points = [_unescape(line.split()[4]) for line in table]
    found = [p for p in points if p == prefix or p.startswith(prefix + "/")]
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_all(path: Path) -> None:
    for point in mounts_under(path):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", point], capture_output=True)
    left = mounts_under(path)
    if left:
        raise ApplianceError(f"still mounted under {path}: {left[0]}: unmount it by hand "
                             "(umount -R -l)")


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise ApplianceError(f"mount {' '.join(args)} failed: {result.stderr.strip()}")


class ChrootMounts:
    """/proc, a read-only /sys, a private /dev (tmpfs with the usual nodes, own devpts) and a
    private tmpfs /run in ``root``, a ``policy-rc.d`` that forbids starting services and the
    host's resolv.conf (FIELD-NOTES): what package scripts and Ansible's chroot connection
    need, with nothing of the host that could be written. ``overlay`` (lower, upper, work)
    first mounts ``root`` as an overlay of them; with ``chroot=False`` that overlay is all
    (a view of the tree to make a disk from, with nothing mounted inside it)."""

    def __init__(self, root: Path, *, overlay: tuple[Path, Path, Path] | None = None,
                 resolv_conf: bool = True, chroot: bool = True) -> None:
        self.root = root
        self.overlay = overlay
        self.resolv_conf = resolv_conf and chroot
        self.chroot = chroot
        self._resolv_saved: str | None = None
        self._policy_added = False

    def __enter__(self) -> ChrootMounts:
        r = str(self.root)
        try:
            if self.overlay is not None:
                lower, upper, work = self.overlay
                _mount("-t", "overlay", "-o", f"lowerdir={lower},upperdir={upper},"
                       f"workdir={work}", "overlay", r)
            if not self.chroot:
                return self
            _mount("-t", "proc", "-o", "nosuid,nodev,noexec", "proc", f"{r}/proc")
            _mount("-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", f"{r}/sys")
            _mount("-t", "tmpfs", "-o", "nosuid,mode=0755,size=8m", "tmpfs", f"{r}/dev")
            for name, major, minor in _DEVICES:
                os.mknod(f"{r}/dev/{name}", 0o666 | 0o020000, os.makedev(major, minor))
                os.chmod(f"{r}/dev/{name}", 0o666)
            os.mkdir(f"{r}/dev/pts", 0o755)
            os.mkdir(f"{r}/dev/shm", 0o1777)
            _mount("-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,"
                   "noexec", "devpts", f"{r}/dev/pts")
            os.symlink("pts/ptmx", f"{r}/dev/ptmx")
            os.symlink("/proc/self/fd", f"{r}/dev/fd")
            _mount("-t", "tmpfs", "-o", "nosuid,nodev,mode=1777", "tmpfs", f"{r}/dev/shm")
            _mount("-t", "tmpfs", "-o", "nosuid,nodev,mode=0755,size=256m", "tmpfs", f"{r}/run")
            os.mkdir(f"{r}/run/lock", 0o1777)
            policy = self.root / "usr/sbin/policy-rc.d"
            if not policy.exists():
                policy.write_text("#!/bin/sh\n# probeforge appliance build: nothing starts "
                                  "here\nexit 101\n")
                policy.chmod(0o755)
                self._policy_added = True
            if self.resolv_conf:
                resolv = self.root / "etc/resolv.conf"
                if resolv.is_symlink():
                    self._resolv_saved = os.readlink(resolv)
                if resolv.is_symlink() or resolv.exists():
                    resolv.unlink()
                resolv.write_bytes(Path("/etc/resolv.conf").read_bytes())
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        root = self.root
        if self._policy_added:
            (root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
            self._policy_added = False
        if self._resolv_saved is not None:
            resolv = root / "etc/resolv.conf"
            resolv.unlink(missing_ok=True)
            resolv.symlink_to(self._resolv_saved)
            self._resolv_saved = None
        shutil.rmtree(root / "root/.ansible", ignore_errors=True)
        _kill_rooted_in(root)
        unmount_all(root)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def processes_rooted_in(path: Path) -> list[int]:
    """PIDs whose root directory is ``path`` or below it (daemons a package script left)."""
    prefix = str(Path(path).resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            root = os.readlink(f"/proc/{entry}/root")
        except OSError:
            continue
        if root == prefix or root.startswith(prefix + "/"):
            found.append(int(entry))
    return found


def _kill_rooted_in(root: Path) -> None:
    for pid in processes_rooted_in(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
