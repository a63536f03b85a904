# SPDX-License-Identifier: Apache-2.0
"""The emulated rig, up and down: the supervisor, one emulated board per MiniProbe of the
inventory, registration, and one measurement through the supervisor.

The supervisor is the virtual appliance when the inventory puts it in group ``appliances``
(the embedded default does): the rig boots the appliance under QEMU from a disk of its own
(``<inventory>/.state/rig/<supervisor>/disk.qcow2``, over the generic image, with the host's
seed disk attached) and forwards its ports from 127.0.0.1. Otherwise the RI supervisor runs on
the host as a process.

Everything started here is recorded in ``<inventory>/.state/rig/rig.json`` with its PID, and
stopped by PID: on :meth:`Testbed.stop`, on Ctrl-C, and — should the rig process itself have
been killed — at the start of the next run, which finds the record and stops what is left.
Each board's flash (``<inventory>/.state/rig/<host>/flash.img``) is the device's own state and
stays between runs, as a real probe's flash does; when the built firmware differs from what
the flash runs, the rig programs the new image into it, as a factory programmer would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware.image import read_header
from probe_daemon.catalog import DEVICE_ELEMENT
from probe_daemon.registry import declared_elements, registry_json
from rig import RigError
from rig.appliance import COCKPIT, SSH, ApplianceVM, appliance_disk, boot_files
from rig.board import EmulatedBoard
from rig.dns import running_dnsmasq
from rig.flash import FlashError, active_image, create_flash, install_image
from rig.inventory import EMULATED_BOARD, RigAppliance, RigPlan, RigProbe
from rig.mplane_ri import (
    RIError,
    RISupervisor,
    TLSFiles,
    capabilities_by_token,
    default_cache_dir,
    result_row,
    ri_venv,
    run_specification,
)

# Where an emulated board sees the host, and so the supervisor (QEMU's user network).
HOST_FROM_GUEST = "10.0.2.2"
MEASUREMENT = "ping-average-ip4"


@dataclass(frozen=True)
class Registration:
    probe: str
    token: str
    seconds: float


def device_of(capability: dict[str, Any]) -> str | None:
    """The probe a capability (RI JSON) belongs to: its source.device metadata."""
    value = (capability.get("metadata") or {}).get(DEVICE_ELEMENT)
    return str(value) if value is not None else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Testbed:
    def __init__(self, plan: RigPlan, *, repo: Path, build_dir: Path | None = None,
                 progress: Callable[[str], None] = print, boot_timeout: float = 300.0) -> None:
        self.plan = plan
        self.repo = repo
        # Where playbooks/rig.yml put the images (the firmware role's firmware_output_dir).
        self.build_dir = build_dir or repo / "build" / plan.inventory.name
        self.progress = progress
        self.boot_timeout = boot_timeout
        self.state = plan.state_dir / "rig"
        self.record = self.state / "rig.json"
        self.supervisor: RISupervisor | None = None
        self.appliance: ApplianceVM | None = None
        self.dns: contextlib.ExitStack | None = None
        self.dns_pid: int | None = None
        self.boards: dict[str, EmulatedBoard] = {}
        self.venv: Path | None = None

    # --- paths ----------------------------------------------------------------------------

    @property
    def pki_hosts(self) -> Path:
        return self.plan.state_dir / "pki" / "hosts"

    @property
    def ssh_key(self) -> Path:
        return self.plan.state_dir / "ssh" / "id_ed25519"

    def image_of(self, probe: RigProbe) -> Path:
        directory = self.build_dir / probe.name
        images = sorted(directory.glob("*-sysupgrade.bin"))
        if len(images) != 1:
            raise RigError(f"{directory} holds {len(images)} firmware images, not one: build "
                           f"them with playbooks/rig.yml -i {self.plan.inventory}")
        return images[0]

    def registry(self) -> Path:
        """The probe daemon's element registry, which supervisor and client preload."""
        path = self.state / "probeforge-registry.json"
        text = registry_json(declared_elements())
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        return path

    # --- the record of what runs ----------------------------------------------------------

    def _write_record(self) -> None:
        supervisor, mark = None, None
        if self.supervisor is not None:
            supervisor, mark = self.supervisor.pid, "mpsup"
        elif self.appliance is not None:
            supervisor, mark = self.appliance.pid, str(self.appliance.disk)
        record = {"rig": os.getpid(), "supervisor": supervisor, "supervisor_mark": mark,
                  "dns": self.dns_pid,
                  "boards": {name: {"pid": board.pid, "flash": str(board.flash)}
                             for name, board in self.boards.items()}}
        temp = self.record.with_suffix(".tmp")
        temp.write_text(json.dumps(record, indent=2) + "\n")
        temp.replace(self.record)

    def clean_stale(self) -> list[str]:
        """Stop what a rig that died without tearing down left running; refuse to start
        beside a rig that is still running."""
        if not self.record.is_file():
            return []
        try:
            record: dict[str, Any] = json.loads(self.record.read_text())
        except (OSError, ValueError):
            record = {}
        owner = record.get("rig")
        if isinstance(owner, int) and owner != os.getpid() and _pid_alive(owner) \
                and "rig" in _cmdline(owner):
            raise RigError(f"a rig is already running for {self.plan.inventory} (pid {owner}): "
                           "stop it with `probeforge-rig down` or Ctrl-C in its terminal")
        stopped = []
        leftovers = [(record.get("supervisor"), record.get("supervisor_mark")),
                     (record.get("dns"), "dnsmasq")]
        leftovers += [(b.get("pid"), b.get("flash", "")) for b in
                      (record.get("boards") or {}).values()]
        for pid, mark in leftovers:
            # Only a process that is still the one recorded (its command line names what it
            # ran): a PID may have been reused since.
            if isinstance(pid, int) and _pid_alive(pid) and mark and mark in _cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                stopped.append(str(pid))
        self.record.unlink(missing_ok=True)
        return stopped

    # --- bringing it up -------------------------------------------------------------------

    def dns_records(self) -> list[str]:
        """The testbed's names: the supervisor (the host, from the boards) and every probe,
        each with its reverse record; nothing outside the domain is answered."""
        domain = self.plan.dns_domain
        records = [f"--local=/{domain}/",
                   f"--host-record={self.plan.supervisor}.{domain},{HOST_FROM_GUEST}"]
        records += [f"--host-record={p.name}.{domain},{p.guest_address}"
                    for p in self.plan.probes]
        return records

    def start_dns(self) -> None:
        self.dns = contextlib.ExitStack()
        server = self.dns.enter_context(running_dnsmasq(
            lambda _port: self.dns_records(), f"{self.plan.supervisor}.{self.plan.dns_domain}",
            port=self.plan.dns_port, started=self._dns_started))
        self.progress(f"dns: the rig's names ({self.plan.dns_domain}) on 127.0.0.1:"
                      f"{server.port} ({HOST_FROM_GUEST}#{server.port} from the boards)")

    def _dns_started(self, pid: int) -> None:
        self.dns_pid = pid
        self._write_record()

    def start_supervisor(self) -> None:
        self.progress("supervisor: preparing the mPlane RI venv (offline, artifact cache)")
        self.venv = ri_venv(default_cache_dir())
        if self.plan.appliance is not None:
            self._start_appliance(self.plan.appliance)
            return
        work = self.state / "supervisor"
        work.mkdir(parents=True, exist_ok=True)
        bundle = self.pki_hosts / self.plan.supervisor
        self.supervisor = RISupervisor(
            self.venv, work, component_port=self.plan.component_port,
            client_port=self.plan.client_port, host="127.0.0.1",
            tls=TLSFiles.from_pki_bundle(bundle),
            authz_ini=(self.plan.state_dir / "pki" / "authz.ini").read_text(),
            registry_preload=self.registry())
        self.supervisor.__enter__()
        self._write_record()
        self.progress(f"supervisor: mpsup pid {self.supervisor.pid}, clients on "
                      f"127.0.0.1:{self.plan.client_port}, components on "
                      f"127.0.0.1:{self.plan.component_port} ({HOST_FROM_GUEST} from the boards)")

    def _start_appliance(self, appliance: RigAppliance) -> None:
        name = self.plan.supervisor
        disk, seed, generic = appliance_disk(self.build_dir / name,
                                             self.state / name / "disk.qcow2", self.progress)
        vm = ApplianceVM(disk, self.state / name, key=self.ssh_key, seed=seed,
                         kernel=boot_files(generic), name=name, snapshot=False,
                         boot_timeout=self.boot_timeout,
                         forwards={SSH: appliance.ssh_port, COCKPIT: appliance.console_port,
                                   self.plan.client_port: self.plan.client_port,
                                   self.plan.component_port: self.plan.component_port})
        self.progress(f"{name}: powering on the supervisor appliance ({disk.name} over "
                      f"{generic.name}, console {vm.console_log})")
        self.appliance = vm
        try:
            vm.start(started=lambda _pid: self._write_record())
        except BaseException:
            self.appliance = None
            self._write_record()
            raise
        self.progress(f"{name}: SSH after {vm.seconds_to_ssh:.0f} s ({vm.accel}), on "
                      f"127.0.0.1:{appliance.ssh_port}; waiting for its supervisor")
        self._wait_supervisor()
        self.progress(f"supervisor: the appliance {name} (QEMU pid {vm.pid}) answers after "
                      f"{time.monotonic() - vm.started:.0f} s: clients on "
                      f"127.0.0.1:{self.plan.client_port}, components on "
                      f"127.0.0.1:{self.plan.component_port} ({HOST_FROM_GUEST} from the "
                      f"boards), web console https://127.0.0.1:{appliance.console_port}/")

    def _wait_supervisor(self) -> None:
        """Until the supervisor lists capabilities to the operator over mutual TLS."""
        assert self.appliance is not None
        vm = self.appliance
        deadline = time.monotonic() + self.boot_timeout
        while True:
            if not vm.running:
                raise RigError(f"{self.plan.supervisor}: the appliance powered off (console: "
                               f"{vm.console_log})")
            try:
                self.capabilities()
                return
            except RIError as exc:
                if time.monotonic() > deadline:
                    state = vm.ssh("systemctl is-active mplane-supervisor; journalctl -b "
                                   "--no-pager -n 15 -u mplane-supervisor", timeout=30)
                    raise RigError(f"{self.plan.supervisor}: the supervisor does not answer "
                                   f"{self.client_url} within {self.boot_timeout:.0f} s "
                                   f"({str(exc).splitlines()[0]}); in the appliance: "
                                   f"{state.stdout.strip()[-800:]}") from None
            time.sleep(3)

    @property
    def client_url(self) -> str:
        """Where the operator reaches the supervisor."""
        if self.supervisor is not None:
            return self.supervisor.client_url
        if self.appliance is not None:
            return f"https://127.0.0.1:{self.plan.client_port}"
        raise RigError("the supervisor is not running")

    def flash(self, probe: RigProbe) -> Path:
        """The probe's flash, holding the built firmware (programmed when it differs)."""
        directory = self.state / probe.name
        directory.mkdir(parents=True, exist_ok=True)
        flash = directory / "flash.img"
        image = self.image_of(probe)
        wanted = read_header(image)
        if not flash.is_file():
            self.progress(f"{probe.name}: new flash {flash}")
            create_flash(flash)
        try:
            _, running = active_image(flash, board=EMULATED_BOARD)
            current = running.build
        except FlashError:
            current = None
        if current != wanted.build:
            self.progress(f"{probe.name}: programming build {wanted.build} into the flash "
                          f"(was {current or 'empty'})")
            install_image(flash, image)
        return flash

    def start_boards(self) -> None:
        for probe in self.plan.probes:
            flash = self.flash(probe)
            board = EmulatedBoard(
                flash, self.state / probe.name, ssh_port=probe.ssh_port,
                console_log=self.state / probe.name / "console.log",
                console_port=probe.console_port, guest_address=probe.guest_address,
                ssh_key=self.ssh_key)
            board.start()
            self.boards[probe.name] = board
            self._write_record()
            self.progress(f"{probe.name}: powered on (QEMU pid {board.pid}), SSH on "
                          f"127.0.0.1:{probe.ssh_port}, console on 127.0.0.1:"
                          f"{probe.console_port} and {board.console_log}")

    def _operator(self) -> TLSFiles:
        return TLSFiles.from_pki_bundle(self.pki_hosts / self.plan.operator)

    def capabilities(self) -> dict[str, dict[str, Any]]:
        if self.venv is None:
            raise RigError("the supervisor is not running")
        return capabilities_by_token(self.venv, self.client_url,
                                     tls=self._operator(), registry_preload=self.registry())

    def wait_registered(self) -> dict[str, Registration]:
        """Until every probe's measurement is visible to the operator through the
        supervisor; each probe names itself in its capabilities' source.device."""
        start = time.monotonic()
        found: dict[str, Registration] = {}
        names = {p.name for p in self.plan.probes}
        while len(found) < len(names):
            for name, board in self.boards.items():
                if board.error:
                    raise RigError(f"{name}: {board.error}")
            if self.appliance is not None and not self.appliance.running:
                raise RigError(f"{self.plan.supervisor}: the supervisor appliance powered off "
                               f"(console: {self.appliance.console_log})")
            with contextlib.suppress(RIError):
                for token, capability in self.capabilities().items():
                    device = device_of(capability)
                    if capability.get("label") == MEASUREMENT and device in names \
                            and device not in found:
                        found[device] = Registration(device, token, time.monotonic() - start)
                        self.progress(f"{device}: registered after "
                                      f"{found[device].seconds:.0f} s")
            if len(found) == len(names):
                break
            if time.monotonic() - start > self.boot_timeout:
                missing = sorted(names - set(found))
                tails = "; ".join(f"{n}: console {self.state / n / 'console.log'}"
                                  for n in missing)
                raise RigError(f"{', '.join(missing)} not registered with the supervisor "
                               f"within {self.boot_timeout:.0f} s ({tails})")
            time.sleep(3)
        return found

    def measure(self, registration: Registration) -> dict[str, Any]:
        """One ping from the probe to the host, through the supervisor, with the RI client."""
        if self.venv is None:
            raise RigError("the supervisor is not running")
        probe = next(p for p in self.plan.probes if p.name == registration.probe)
        reply = run_specification(
            self.venv, self.client_url, registration.token,
            {"destination.ip4": HOST_FROM_GUEST, "source.ip4": probe.guest_address},
            tls=self._operator(), when="now + 5s / 1s", registry_preload=self.registry(),
            timeout=120)
        try:
            return result_row(reply)
        except RIError as exc:
            raise RigError(f"{probe.name}: the measurement returned no result: {exc}") from None

    def stop_supervisor(self) -> None:
        """Take the supervisor away (an outage); :meth:`start_supervisor` brings it back (a
        fresh RI process, or the same appliance booted again from its disk)."""
        if self.supervisor is not None:
            self.progress(f"supervisor: stopping mpsup pid {self.supervisor.pid}")
            self.supervisor.__exit__(None, None, None)
            self.supervisor = None
            self._write_record()
        if self.appliance is not None:
            self.progress(f"{self.plan.supervisor}: shutting the supervisor appliance down "
                          f"(QEMU pid {self.appliance.pid})")
            self.appliance.power_off()
            self.appliance = None
            self._write_record()

    # --- taking it down -------------------------------------------------------------------

    def stop(self) -> None:
        for name, board in list(self.boards.items()):
            self.progress(f"{name}: powering off (QEMU pid {board.pid})")
            board.stop()
            del self.boards[name]
        self.stop_supervisor()
        if self.dns is not None:
            self.progress(f"dns: stopping dnsmasq pid {self.dns_pid}")
            self.dns.close()
            self.dns = None
            self.dns_pid = None
        self.record.unlink(missing_ok=True)
