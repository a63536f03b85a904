# SPDX-License-Identifier: Apache-2.0
"""The appliance under test: a small deployment inventory, and a QEMU guest booted from an
appliance image with a host's seed disk.

:func:`write_inventory` makes an inventory with one appliance (a supervisor running its own
probe daemon) and an operator, its PKI under ``<dir>/.state/pki`` and outputs under
``<dir>/build``. :class:`ApplianceVM` boots a disk image (qcow2 on virtio as KVM/Proxmox would,
or a VMDK on SATA/AHCI with an E1000 NIC as VirtualBox/VMware would, BIOS or UEFI) with
``snapshot=on``, so the image itself never boots, and forwards SSH, the supervisor's client
port and Cockpit from 127.0.0.1. KVM when a test boot shows it works, else TCG.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

from tests.support.targets import free_port, kvm_usable, qemu_binary

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
SSH_OPTIONS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
               "-o", "ConnectTimeout=10")
HOST = "appliance-01"
CLIENT_PORT, COMPONENT_PORT = 8888, 8889


def write_inventory(directory: Path, public_key: Path) -> Path:
    """A deployment with ``HOST`` in appliances and supervisors and an operator; its path."""
    (directory / "group_vars").mkdir(parents=True)
    hosts = {"all": {"children": {
        "supervisors": {"hosts": {HOST: {
            "ansible_host": "127.0.0.1",
            "mplane_supervisor_client_port": CLIENT_PORT,
            "mplane_supervisor_component_port": COMPONENT_PORT}}},
        "appliances": {"hosts": {HOST: {}}},
        "clients": {"hosts": {"operator": {"ansible_host": "127.0.0.1",
                                           "ansible_connection": "ansible.builtin.local"}}},
    }}}
    (directory / "hosts.yml").write_text(json.dumps(hosts, indent=1) + "\n")
    variables = {
        "pki_deployment": "appliance-test", "pki_domains": ["appliance-test.internal"],
        "pki_networks": ["127.0.0.0/8", "10.0.2.0/24"],
        "pki_ca_passphrase_file": str(directory / ".state" / "passphrase"),
        "pki_ca_passphrase_file_create": True,
        "pki_mplane_roles": {"operators": ["clients"], "supervisors": ["supervisors"]},
        "pki_authorizations": {"ping-": ["operators"], "traceroute": ["operators"],
                               "http-download": ["operators"], "dns-": ["operators"]},
        # The appliance's own probe daemon talks to the supervisor beside it.
        "mplane_supervisor_host": HOST, "mplane_supervisor_address": "127.0.0.1",
        "mplane_supervisor_client_port": CLIENT_PORT,
        "mplane_supervisor_component_port": COMPONENT_PORT, "mplane_tls": True,
        "appliance_base_authorized_key_files": [str(public_key)],
        "appliance_output_dir": str(directory / "build"),
    }
    (directory / "group_vars" / "all.yml").write_text(json.dumps(variables, indent=1) + "\n")
    return directory


class ApplianceVM:
    """``disk`` booted under QEMU with ``seed`` attached; see the module's documentation."""

    def __init__(self, disk: Path, workdir: Path, *, key: Path, seed: Path | None,
                 kernel: tuple[Path, Path], fmt: str = "qcow2", sata: bool = False,
                 uefi: bool = False, name: str = "appliance", memory_mb: int = 2048,
                 cpus: int = 2, boot_timeout: float = 420) -> None:
        self.disk, self.workdir, self.key, self.seed = disk, workdir, key, seed
        self.kernel, self.fmt, self.sata, self.uefi = kernel, fmt, sata, uefi
        self.name, self.memory_mb, self.cpus = name, memory_mb, cpus
        self.boot_timeout = boot_timeout
        self.console_log = workdir / f"{name}-console.log"
        self.ssh_port = self.client_port = self.console_port = 0
        self.accel = ""
        self.seconds_to_ssh = 0.0
        self.started = 0.0
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self, qemu: str) -> list[str]:
        accel = ["-accel", "kvm", "-cpu", "host"] if self.accel == "kvm" else \
            ["-accel", "tcg,thread=multi"]
        command = ["setpriv", "--pdeathsig", "KILL", qemu, "-name", self.name, "-machine",
                   "q35", *accel, "-smp", str(self.cpus), "-m", str(self.memory_mb),
                   "-nodefaults", "-display", "none", "-serial", f"file:{self.console_log}",
                   "-no-reboot"]
        if self.uefi:
            variables = self.workdir / f"{self.name}-OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, variables)
            command += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                        "-drive", f"if=pflash,format=raw,unit=1,file={variables}"]
        drive = f"file={self.disk},format={self.fmt},if=none,id=disk0,snapshot=on"
        if self.sata:  # q35's own AHCI controller, as VirtualBox and VMware attach the OVA
            command += ["-drive", drive, "-device", "ide-hd,drive=disk0,bus=ide.0,bootindex=0"]
        else:
            command += ["-drive", drive, "-device", "virtio-blk-pci,drive=disk0,bootindex=0"]
        if self.seed is not None:
            command += ["-drive", f"file={self.seed},format=raw,if=none,id=seed,readonly=on",
                        "-device", "virtio-blk-pci,drive=seed"]
        forwards = (f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22,"
                    f"hostfwd=tcp:127.0.0.1:{self.client_port}-:{CLIENT_PORT},"
                    f"hostfwd=tcp:127.0.0.1:{self.console_port}-:9090")
        model = "e1000" if self.sata else "virtio-net-pci"
        command += ["-nic", f"user,model={model},restrict=on,{forwards}"]
        return command

    def __enter__(self) -> ApplianceVM:
        qemu = qemu_binary()
        if qemu is None:
            raise RuntimeError("qemu-system-x86_64 not installed (apt-get install "
                               "qemu-system-x86)")
        self.accel = "kvm" if kvm_usable(*self.kernel) else "tcg"
        self.ssh_port, self.client_port, self.console_port = (free_port(), free_port(),
                                                              free_port())
        started = self.started = time.monotonic()
        self._proc = subprocess.Popen(self.command(qemu), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            self._wait_ssh(started)
        except BaseException:
            self.close()
            raise
        self.seconds_to_ssh = time.monotonic() - started
        return self

    def _wait_ssh(self, started: float) -> None:
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                error = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"QEMU exited {self._proc.returncode}: {error[-500:]}\n"
                                   f"{self.console()[-3000:]}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                if self.ssh("true", timeout=20).returncode == 0:
                    return
            if time.monotonic() - started > self.boot_timeout:
                raise RuntimeError(f"no SSH after {self.boot_timeout:.0f} s "
                                   f"({self.accel}):\n{self.console()[-3000:]}")
            time.sleep(2)

    def console(self) -> str:
        return self.console_log.read_text(errors="replace") if self.console_log.exists() else ""

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ssh", *SSH_OPTIONS, "-i", str(self.key), "-p",
                               str(self.ssh_port), "root@127.0.0.1", command],
                              capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=30)
            if self._proc.stderr is not None:
                self._proc.stderr.close()
            self._proc = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
