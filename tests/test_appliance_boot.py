# SPDX-License-Identifier: Apache-2.0
"""The appliance end to end: playbooks/appliance.yml builds the generic images and a host's
seed disk for a test deployment (a second run changes nothing); the generic tree holds no
host key, machine-id or private key; the qcow2 boots (BIOS, virtio, as on KVM/Proxmox) with
the seed disk, takes the host's identity at first boot, and its supervisor answers an
operator over mutual TLS with the deployment's certificates, its own probe daemon registered
with it; the VMDK taken out of the OVA boots under UEFI on SATA with an E1000 NIC (as
VirtualBox and VMware attach it) and takes the same identity. Boots use ``snapshot=on``: the
shipped images never boot.

The same playbook run also makes the host's own images (``appliance_host_image``): they hold
its identity, and the qcow2 boots without any seed disk as that host.

Warm caches (.debs, the provisioned tree): about 11 min here under TCG; cold adds the root
filesystem and provisioning (about 5 min).
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from appliance.generalise import private_keys
from rig.appliance import ApplianceVM, boot_files
from tests.conftest import REPO
from tests.support.appliance import (
    CLIENT_PORT,
    HOST,
    https_get,
    operator_get,
    output_dir,
    write_inventory,
)
from tests.support.targets import free_port, run_playbook

pytestmark = [pytest.mark.slow, pytest.mark.appliance, pytest.mark.ansible,
              pytest.mark.skipif(os.geteuid() != 0, reason="the build needs root")]

PLAYBOOK = REPO / "playbooks" / "appliance.yml"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    directory = tmp_path_factory.mktemp("appliance")
    key = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    inventory = write_inventory(directory / "inventory", key.with_suffix(".pub"),
                                host_image=True)
    started = time.monotonic()
    first = run_playbook(PLAYBOOK, inventory, timeout=2400)
    build_time = time.monotonic() - started
    assert first.returncode == 0, first.report()
    started = time.monotonic()
    second = run_playbook(PLAYBOOK, inventory, timeout=1200)
    assert second.returncode == 0 and second.changed() == 0, second.report()
    host_dir = output_dir(inventory) / HOST
    manifest = json.loads((host_dir / "manifest.json").read_text())
    generic = Path(manifest["generic"]["directory"])
    print(f"\nappliance: playbook {build_time:.0f} s, second run "
          f"{time.monotonic() - started:.0f} s")
    return {"directory": directory, "key": key, "inventory": inventory, "host_dir": host_dir,
            "manifest": manifest, "generic": generic,
            "generic_manifest": json.loads((generic / "manifest.json").read_text())}


def _sums_match(directory: Path) -> None:
    for line in (directory / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        out = subprocess.run(["sha256sum", str(directory / name)], capture_output=True,
                             text=True, check=True).stdout.split()[0]
        assert out == digest, name


def test_outputs_are_complete_and_generic(built):
    generic, manifest = built["generic"], built["generic_manifest"]
    name = manifest["name"]
    for suffix in (".qcow2", ".vmdk", ".ova", ".packages"):
        assert (generic / f"{name}{suffix}").is_file()
    _sums_match(generic)
    _sums_match(built["host_dir"])
    assert {o["component"] for o in manifest["omitted"]} <= {"tstat", "glimpse_console"}
    assert any(p["name"] == "cockpit-ws" for p in manifest["packages"])
    # The OVA: descriptor, manifest, disk, in that order; the manifest's hashes hold.
    with tarfile.open(generic / f"{name}.ova") as ova:
        names = ova.getnames()
        assert names == [f"{name}.ovf", f"{name}.mf", f"{name}.vmdk"]
        mf = ova.extractfile(names[1]).read().decode()
        assert mf.startswith(f"SHA256({name}.ovf)= ")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json",
                                      str(generic / f"{name}.vmdk")], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    # The generic tree: no host keys, an empty machine-id, no private key anywhere.
    tree = boot_files(generic)[0].parents[1]
    assert not list((tree / "etc/ssh").glob("ssh_host_*"))
    assert (tree / "etc/machine-id").read_text() == ""
    assert private_keys(tree) == []
    assert "root=UUID=" in (tree / "boot/grub/grub.cfg").read_text()
    # The package's empty credentials directory, no credentials in it.
    assert not list((tree / "etc/mplane/certs").glob("*"))
    # The seed: the host's key 0600 root, its name, root's SSH key.
    files = {f["path"]: f for f in built["manifest"]["seed"]["files"]}
    assert files["/etc/mplane/certs/probe.key"]["mode"] == "0600"
    assert files["/etc/mplane/certs/supervisor.key"]["mode"] == "0600"
    assert "/etc/hostname" in files and "/root/.ssh/authorized_keys" in files
    seed = built["host_dir"] / built["manifest"]["seed"]["file"]
    assert seed.stat().st_mode & 0o077 == 0


def _check_services(vm: ApplianceVM, *, seeded: bool = True) -> None:
    """The host's name and services; ``seeded``: its identity came from a seed disk (not
    built into the image, whose seed unit then has nothing to do)."""
    assert vm.ssh("hostname").stdout.strip() == HOST, vm.console()[-2000:]
    deadline = time.monotonic() + 240
    units = ["mplane-supervisor.service", "probe-daemon.service", "ssh.service",
             "systemd-timesyncd.service", "cockpit.socket"]
    units += ["probeforge-seed.service"] if seeded else []
    while True:
        states = vm.ssh("systemctl is-active " + " ".join(units)).stdout.split()
        if states == ["active"] * len(units):
            break
        assert time.monotonic() < deadline, (
            f"{dict(zip(units, states, strict=False))}\n"
            + vm.ssh("journalctl -b --no-pager -n 80").stdout)
        time.sleep(3)
    assert vm.ssh("test -s /etc/machine-id && test -e /etc/ssh/ssh_host_ed25519_key") \
        .returncode == 0
    assert vm.ssh("stat -c %a /etc/mplane/certs/probe.key").stdout.strip() == "600"


def _wait_registered(vm: ApplianceVM, pki: Path, timeout: float = 240) -> str:
    """The appliance's probe daemon's ping capability as the supervisor shows it to an
    operator (the RI lists capability links; each link's JSON names the probe)."""
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        try:
            status, body = operator_get(vm.port(CLIENT_PORT), "/capability", pki)
            for token in re.findall(r"href='(/capability/[0-9a-f]+)'", body):
                status, detail = operator_get(vm.port(CLIENT_PORT), token, pki)
                if status == 200 and HOST in detail and "ping-average-ip4" in detail:
                    return detail
        except (OSError, ssl.SSLError):
            pass
        time.sleep(3)
    raise AssertionError(f"the probe daemon never registered: {body[:500]}\n"
                         + vm.ssh("journalctl -b --no-pager -n 60 -u probe-daemon "
                                  "-u mplane-supervisor").stdout)


def test_qcow2_boots_with_its_seed_and_registers(built, tmp_path, capsys):
    generic, manifest = built["generic"], built["generic_manifest"]
    seed = built["host_dir"] / built["manifest"]["seed"]["file"]
    pki = built["inventory"] / ".state" / "pki"
    with ApplianceVM(generic / f"{manifest['name']}.qcow2", tmp_path, key=built["key"],
                     seed=seed, kernel=boot_files(generic),
                     forwards={CLIENT_PORT: free_port()}, name="qcow2-bios") as vm:
        _check_services(vm)
        _wait_registered(vm, pki)
        registered = time.monotonic()
        # The web console answers on 9090 (TLS, self-signed until an operator changes it).
        # (The first connection makes Cockpit's self-signed certificate: slow when emulated.)
        console = vm.ssh("python3 -c \"import ssl, urllib.request as u; print(u.urlopen("
                         "'https://127.0.0.1:9090/', timeout=280, "
                         "context=ssl._create_unverified_context()).status)\"", timeout=300)
        assert console.stdout.strip() == "200", console.stderr[-1000:]
        # A client without a certificate is refused.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https_get("127.0.0.1", vm.port(CLIENT_PORT), "/capability",
                      ca=pki / "hosts" / HOST / "chain.pem", cert=None)
        # The seed ran once and marked itself done; the operators' PKI command works.
        assert "build " in vm.ssh("cat /var/lib/probeforge/seed.done").stdout
        assert vm.ssh("probeforge-pki --help").returncode == 0
        with capsys.disabled():
            print(f"\nappliance qcow2 ({vm.accel}, BIOS): power-on -> SSH "
                  f"{vm.seconds_to_ssh:.0f} s, -> probe registered "
                  f"{registered - vm.started:.0f} s")


def test_vmdk_from_the_ova_boots_under_uefi_on_sata(built, tmp_path, capsys):
    generic, manifest = built["generic"], built["generic_manifest"]
    name = manifest["name"]
    with tarfile.open(generic / f"{name}.ova") as ova:
        ova.extract(f"{name}.vmdk", tmp_path, filter="data")
    seed = built["host_dir"] / built["manifest"]["seed"]["file"]
    with ApplianceVM(tmp_path / f"{name}.vmdk", tmp_path, key=built["key"], seed=seed,
                     kernel=boot_files(generic), forwards={CLIENT_PORT: free_port()},
                     fmt="vmdk", sata=True, uefi=True, name="vmdk-uefi") as vm:
        _check_services(vm)
        assert vm.ssh("test -d /sys/firmware/efi").returncode == 0
        _wait_registered(vm, built["inventory"] / ".state" / "pki")
        with capsys.disabled():
            print(f"\nappliance VMDK from the OVA ({vm.accel}, UEFI, SATA): power-on -> SSH "
                  f"{vm.seconds_to_ssh:.0f} s")


def test_host_image_carries_the_identity_and_boots_without_a_seed(built, tmp_path, capsys):
    manifest, host_dir, generic = built["manifest"], built["host_dir"], built["generic"]
    name = f"{built['generic_manifest']['name']}-{HOST}"
    images = {i["file"]: i["sha256"] for i in manifest["images"]}
    assert set(images) == {f"{name}.qcow2", f"{name}.vmdk", f"{name}.ova"}
    # They hold the host's private key: the directory is the owner's alone, and they are
    # images of their own, not the generic ones.
    assert host_dir.stat().st_mode & 0o077 == 0
    assert not set(images.values()) & {i["sha256"] for i in
                                       built["generic_manifest"]["images"]}
    with ApplianceVM(host_dir / f"{name}.qcow2", tmp_path, key=built["key"], seed=None,
                     kernel=boot_files(generic), forwards={CLIENT_PORT: free_port()},
                     name="host-image") as vm:
        _check_services(vm, seeded=False)
        assert "device built-in" in vm.ssh("cat /var/lib/probeforge/seed.done").stdout
        assert vm.ssh("blkid -L PFSEED").stdout.strip() == ""  # no seed disk attached
        _wait_registered(vm, built["inventory"] / ".state" / "pki")
        with capsys.disabled():
            print(f"\nappliance host image ({vm.accel}, no seed): power-on -> SSH "
                  f"{vm.seconds_to_ssh:.0f} s, -> registered "
                  f"{time.monotonic() - vm.started:.0f} s")
