# SPDX-License-Identifier: Apache-2.0
"""A virtual appliance powered on under QEMU: a disk image (qcow2 on virtio as KVM and Proxmox
attach it, or a VMDK on SATA/AHCI with an E1000 NIC as VirtualBox and VMware do; BIOS or UEFI)
with a host's seed disk, guest ports forwarded from 127.0.0.1.

The rig boots its supervisor appliance from a disk of its own, a qcow2 overlay over the
generic image that keeps the appliance's state between runs as a real disk does
(:func:`appliance_disk`); the appliance tests boot the shipped images with ``snapshot=on`` so
those never change. KVM when a test boot shows it works, else TCG.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

from appliance import ApplianceError
from appliance.build import DEFAULT_CACHE
from appliance.seed import generic_base
from rig import RigError
from rig.kvm import kvm_usable, qemu_binary
from rig.mplane_ri import free_port
from rig.ssh import SshEndpoint

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
SSH, COCKPIT = 22, 9090


class ApplianceVM:
    """``disk`` booted under QEMU with ``seed`` attached; see the module's documentation.

    ``forwards`` maps guest TCP ports to ports on the host's 127.0.0.1 (default: SSH and
    Cockpit to free ports); :meth:`port` gives the host's side.
    """

    def __init__(self, disk: Path, workdir: Path, *, key: Path, seed: Path | None,
                 kernel: tuple[Path, Path], fmt: str = "qcow2", sata: bool = False,
                 uefi: bool = False, name: str = "appliance", memory_mb: int = 2048,
                 cpus: int = 2, boot_timeout: float = 420,
                 forwards: Mapping[int, int] | None = None, snapshot: bool = True) -> None:
        self.disk, self.workdir, self.key, self.seed = disk, workdir, key, seed
        self.kernel, self.fmt, self.sata, self.uefi = kernel, fmt, sata, uefi
        self.name, self.memory_mb, self.cpus = name, memory_mb, cpus
        self.boot_timeout, self.snapshot = boot_timeout, snapshot
        self.forwards = dict(forwards) if forwards is not None else {}
        self.console_log = workdir / f"{name}-console.log"
        self.accel = ""
        self.seconds_to_ssh = 0.0
        self.started = 0.0
        self._proc: subprocess.Popen[bytes] | None = None

    def port(self, guest: int) -> int:
        """The port on 127.0.0.1 that reaches ``guest`` in the appliance."""
        if guest not in self.forwards:
            raise RigError(f"guest port {guest} of {self.name} is not forwarded: add it to "
                           "the VM's forwards")
        return self.forwards[guest]

    @property
    def ssh_port(self) -> int:
        return self.port(SSH)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def endpoint(self) -> SshEndpoint:
        return SshEndpoint("127.0.0.1", self.ssh_port, self.key)

    def command(self, qemu: str) -> list[str]:
        accel = ["-accel", "kvm", "-cpu", "host"] if self.accel == "kvm" else \
            ["-accel", "tcg,thread=multi"]
        command = ["setpriv", "--pdeathsig", "KILL", qemu, "-name", self.name, "-machine",
                   "q35", *accel, "-smp", str(self.cpus), "-m", str(self.memory_mb),
                   "-nodefaults", "-display", "none", "-serial", f"file:{self.console_log}",
                   "-no-reboot"]
        if self.uefi:
            variables = self.workdir / f"{self.name}-OVMF_VARS.fd"
            if not variables.is_file() or self.snapshot:
                shutil.copyfile(OVMF_VARS, variables)
            command += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                        "-drive", f"if=pflash,format=raw,unit=1,file={variables}"]
        drive = f"file={self.disk},format={self.fmt},if=none,id=disk0"
        drive += ",snapshot=on" if self.snapshot else ""
        if self.sata:  # q35's own AHCI controller, as VirtualBox and VMware attach the OVA
            command += ["-drive", drive, "-device", "ide-hd,drive=disk0,bus=ide.0,bootindex=0"]
        else:
            command += ["-drive", drive, "-device", "virtio-blk-pci,drive=disk0,bootindex=0"]
        if self.seed is not None:
            command += ["-drive", f"file={self.seed},format=raw,if=none,id=seed,readonly=on",
                        "-device", "virtio-blk-pci,drive=seed"]
        forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}"
                            for guest, host in sorted(self.forwards.items()))
        model = "e1000" if self.sata else "virtio-net-pci"
        # restrict=on: the appliance reaches nothing outside, not even the host.
        command += ["-nic", f"user,model={model},restrict=on,{forwards}"]
        return command

    def start(self, *, started: Callable[[int], None] | None = None) -> ApplianceVM:
        """Power on and wait for SSH; ``started`` hears QEMU's PID as soon as there is one."""
        qemu = qemu_binary()
        if qemu is None:
            raise RigError("qemu-system-x86_64 is not installed: run setup/setup.sh (Debian "
                           "package qemu-system-x86)")
        self.accel = "kvm" if kvm_usable(*self.kernel) else "tcg"
        for guest in (SSH, COCKPIT):
            self.forwards.setdefault(guest, free_port())
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self._proc = subprocess.Popen(self.command(qemu), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if started is not None:
            started(self._proc.pid)
        try:
            self._wait_ssh()
        except BaseException:
            self.close()
            raise
        self.seconds_to_ssh = time.monotonic() - self.started
        return self

    def _wait_ssh(self) -> None:
        assert self._proc is not None
        endpoint = self.endpoint
        while True:
            if self._proc.poll() is not None:
                error = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RigError(f"{self.name}: QEMU exited {self._proc.returncode}: "
                               f"{error.strip()[-500:]} (console: {self.console_log})"
                               f"\n{self.console()[-3000:]}")
            failure = endpoint.failure(timeout=20)
            if failure is None:
                return
            if time.monotonic() - self.started > self.boot_timeout:
                raise RigError(f"{self.name}: no SSH on 127.0.0.1:{self.ssh_port} after "
                               f"{self.boot_timeout:.0f} s ({self.accel}), last try: {failure}"
                               f" (console: {self.console_log})\n{self.console()[-3000:]}")
            time.sleep(2)

    def console(self) -> str:
        return self.console_log.read_text(errors="replace") if self.console_log.exists() else ""

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``command`` in the appliance's shell, as root; its exit status is the caller's."""
        return self.endpoint.run(command, timeout=timeout, check=False)

    def power_off(self, timeout: float = 120) -> None:
        """Shut down cleanly (systemd stops every service and syncs); power cut if the guest
        does not go within ``timeout``."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            # The session may die with the guest: waiting says whether it went.
            with contextlib.suppress(RigError):
                self.ssh("systemctl poweroff", timeout=20)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=timeout)
        self.close()

    def close(self) -> None:
        """Power cut: the process ends at once."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=30)
            if self._proc.stderr is not None:
                self._proc.stderr.close()
            self._proc = None

    def __enter__(self) -> ApplianceVM:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def boot_files(generic: Path, cache: Path = DEFAULT_CACHE) -> tuple[Path, Path]:
    """The kernel and initrd of the generic images in ``generic`` (their build directory),
    from the builder's cached tree in ``cache``: what decides whether KVM works for them."""
    try:
        base = generic_base(generic, cache)
    except ApplianceError as exc:
        raise RigError(str(exc)) from None
    boot = base.tree / "boot"
    return boot / f"vmlinuz-{base.kernel}", boot / f"initrd.img-{base.kernel}"


def appliance_disk(host_dir: Path, disk: Path, progress: Callable[[str], None] = print
                   ) -> tuple[Path, Path, Path]:
    """The appliance's own disk, its seed and the generic images' directory, for the host
    whose seed build is in ``host_dir`` (``build/<inventory>/<host>``, playbooks/appliance.yml's
    output).

    ``disk`` is a qcow2 overlay over the generic qcow2 that keeps what the appliance writes
    between runs. The seed is applied once, at first boot, so when the generic image or the
    seed changes the overlay is made afresh (the appliance is "reinstalled", as a factory
    would), and kept otherwise."""
    try:
        manifest = json.loads((host_dir / "manifest.json").read_text())
        seed = host_dir / manifest["seed"]["file"]
        generic = Path(manifest["generic"]["directory"])
        image = next(i for i in manifest["generic"]["images"]
                     if i["file"].endswith(".qcow2"))
    except (OSError, ValueError, KeyError, StopIteration):
        raise RigError(f"{host_dir} holds no appliance seed build (manifest.json): build it "
                       "with playbooks/appliance.yml (or probeforge-rig up, which runs "
                       "playbooks/rig.yml)") from None
    backing = generic / image["file"]
    if not backing.is_file() or not seed.is_file():
        raise RigError(f"{backing if not backing.is_file() else seed} is missing: build the "
                       "appliance again with playbooks/appliance.yml")
    wanted = {"image": image["sha256"], "seed": manifest["seed"].get("sha256")
              or _digest(seed)}
    record = disk.with_suffix(".json")
    try:
        current = json.loads(record.read_text()) if disk.is_file() else None
    except (OSError, ValueError):
        current = None
    if current != wanted:
        progress(f"{host_dir.name}: new appliance disk {disk} over {backing.name}"
                 + (" (the image or the seed changed)" if current else ""))
        disk.parent.mkdir(parents=True, exist_ok=True)
        temp = disk.with_name(f".{disk.name}.part")
        temp.unlink(missing_ok=True)
        done = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                               str(backing), str(temp)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RigError(f"qemu-img create for {disk} failed: {done.stderr.strip()}")
        record.unlink(missing_ok=True)
        temp.replace(disk)
        record.write_text(json.dumps(wanted) + "\n")
    return disk, seed, generic


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
