# SPDX-License-Identifier: Apache-2.0
"""What the rig takes from an inventory (real ``ansible-inventory``) and the supervisor
appliance's own disk (real ``qemu-img``): the supervisor becomes the appliance when it is in
group ``appliances``, every endpoint needs a port of its own, and the appliance's disk is kept
between runs until its image or its seed changes (the seed is applied once, at first boot)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rig import RigError
from rig.appliance import appliance_disk
from rig.inventory import RigAppliance, load_plan
from tests.support.rig_inventory import rig_inventory_copy

ANSIBLE_INVENTORY = str(Path(sys.executable).parent / "ansible-inventory")


def _host_vars(inventory: Path, host: str, **changes: object) -> None:
    path = inventory / "host_vars" / f"{host}.yml"
    variables = yaml.safe_load(path.read_text())
    variables.update(changes)
    path.write_text(yaml.safe_dump(variables))


def test_the_virtual_rigs_supervisor_is_the_appliance(tmp_path):
    inventory = rig_inventory_copy(tmp_path)
    plan = load_plan(inventory, ANSIBLE_INVENTORY)
    variables = yaml.safe_load((inventory / "host_vars" / "supervisor.yml").read_text())
    assert plan.appliance == RigAppliance(variables["ansible_port"],
                                          variables["appliance_console_port"])
    assert [p.name for p in plan.probes] == ["probe-01", "probe-02"]


def test_without_the_appliances_group_the_supervisor_runs_on_the_host(tmp_path):
    inventory = rig_inventory_copy(tmp_path)
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    del hosts["all"]["children"]["appliances"]
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    assert load_plan(inventory, ANSIBLE_INVENTORY).appliance is None


@pytest.mark.parametrize(("variable", "clash"), [
    ("ansible_port", "mplane_supervisor_client_port"),
    ("appliance_console_port", "mplane_supervisor_component_port"),
])
def test_appliance_ports_must_be_their_own(tmp_path, variable, clash):
    inventory = rig_inventory_copy(tmp_path)
    taken = yaml.safe_load((inventory / "host_vars" / "supervisor.yml").read_text())[clash]
    _host_vars(inventory, "supervisor", **{variable: taken})
    with pytest.raises(RigError, match=f"{variable} {taken} is also supervisor {clash}"):
        load_plan(inventory, ANSIBLE_INVENTORY)


def test_an_appliance_needs_its_console_port(tmp_path):
    inventory = rig_inventory_copy(tmp_path)
    _host_vars(inventory, "supervisor", appliance_console_port="web")
    with pytest.raises(RigError, match="appliance_console_port is 'web', not a TCP port"):
        load_plan(inventory, ANSIBLE_INVENTORY)


def test_a_board_port_may_not_be_the_appliances(tmp_path):
    inventory = rig_inventory_copy(tmp_path)
    ssh = yaml.safe_load((inventory / "host_vars" / "supervisor.yml").read_text())[
        "ansible_port"]
    _host_vars(inventory, "probe-02", rig_console_port=ssh)
    with pytest.raises(RigError, match=f"rig_console_port {ssh} is also supervisor "
                                       "ansible_port"):
        load_plan(inventory, ANSIBLE_INVENTORY)


# --- the appliance's disk ----------------------------------------------------------------

def _seed_build(root: Path, seed_bytes: bytes = b"seed one") -> Path:
    """A host's seed build as playbooks/appliance.yml leaves it, over a real (small) qcow2."""
    generic = root / "appliance" / "generic"
    generic.mkdir(parents=True, exist_ok=True)
    image = generic / "generic.qcow2"
    if not image.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"],
                       check=True)
    host_dir = root / "build" / "sup"
    host_dir.mkdir(parents=True, exist_ok=True)
    (host_dir / "sup-seed.img").write_bytes(seed_bytes)
    manifest = {"seed": {"file": "sup-seed.img"},
                "generic": {"directory": str(generic),
                            "images": [{"file": "generic.vmdk", "sha256": "b" * 64},
                                       {"file": "generic.qcow2", "sha256": "a" * 64}]}}
    (host_dir / "manifest.json").write_text(json.dumps(manifest))
    return host_dir


def _backing(disk: Path) -> str:
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)],
                                     capture_output=True, text=True, check=True).stdout)
    return str(info["backing-filename"])


def test_the_appliance_disk_is_an_overlay_kept_until_the_seed_changes(tmp_path):
    host_dir = _seed_build(tmp_path)
    disk_path = tmp_path / "state" / "sup" / "disk.qcow2"
    said: list[str] = []
    disk, seed, generic = appliance_disk(host_dir, disk_path, said.append)
    assert (disk, seed, generic) == (disk_path, host_dir / "sup-seed.img",
                                     tmp_path / "appliance" / "generic")
    assert _backing(disk).endswith("generic/generic.qcow2")
    assert len(said) == 1 and "new appliance disk" in said[0]
    # What the appliance wrote stays: the same disk file, untouched, on the next run.
    stamp = (disk.stat().st_ino, disk.stat().st_mtime_ns)
    appliance_disk(host_dir, disk_path, said.append)
    assert (disk.stat().st_ino, disk.stat().st_mtime_ns) == stamp and len(said) == 1
    # A new seed (a re-issued certificate, say) is applied only at a first boot: new disk.
    _seed_build(tmp_path, b"seed two")
    appliance_disk(host_dir, disk_path, said.append)
    assert disk.stat().st_ino != stamp[0]
    assert "the image or the seed changed" in said[-1]
    assert not list(disk.parent.glob(".*part"))


def test_no_seed_build_names_the_playbook(tmp_path):
    with pytest.raises(RigError, match=r"playbooks/appliance\.yml"):
        appliance_disk(tmp_path / "nothing", tmp_path / "disk.qcow2")
    host_dir = _seed_build(tmp_path)
    (host_dir / "sup-seed.img").unlink()
    with pytest.raises(RigError, match=r"sup-seed\.img is missing: build the appliance again"):
        appliance_disk(host_dir, tmp_path / "disk.qcow2")
