# SPDX-License-Identifier: Apache-2.0
"""Whether KVM works on this machine, decided by booting, and the x86_64 QEMU to run it.

A ``/dev/kvm`` node proves nothing (FIELD-NOTES: a paravirtual one that aborts on ``-cpu
host`` and hangs on other models), so the verdict comes from a test boot; the callers fall
back to TCG.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

_kvm_verdicts: dict[tuple[str, int], bool] = {}


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def kvm_usable(kernel: Path, initrd: Path, timeout: float = 20) -> bool:
    """Whether this kernel boots under KVM here: decided by a test boot with ``-cpu host``
    that must get to the end of the kernel's own start-up (it then panics, having no init,
    and QEMU exits), never by /dev/kvm's existence (FIELD-NOTES: a paravirtual /dev/kvm
    that aborts on ``-cpu host`` and hangs on other models). Remembered per kernel (name
    and size) for the life of the process."""
    qemu = qemu_binary()
    if qemu is None or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    key = (kernel.name, kernel.stat().st_size)
    if key not in _kvm_verdicts:
        proc = subprocess.Popen(
            [qemu, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults",
             "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", str(kernel),
             "-initrd", str(initrd), "-append", "console=ttyS0 panic=-1 rdinit=/nonexistent"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                ready, _, _ = select.select([proc.stdout], [], [], 0.5)
                if ready:
                    seen += os.read(proc.stdout.fileno(), 65536)
                if re.search(rb"Kernel panic|Run /|VFS: ", seen):
                    break
            seen += proc.stdout.read() if proc.poll() is not None else b""
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
        _kvm_verdicts[key] = re.search(rb"Kernel panic|Run /|VFS: ", seen) is not None
    return _kvm_verdicts[key]
