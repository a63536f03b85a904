# SPDX-License-Identifier: Apache-2.0
"""HIL targets from an inventory: each MiniProbe's SSH endpoint, flavour, board, the address
its capabilities carry and the features it has; each virtual appliance's SSH endpoint, its
supervisor's client address and the optional components its image holds.

Everything comes from the inventory as Ansible reads it, so the suite runs against the
emulated rig and against a plant of real routers alike. Features gate tests a target cannot
take: ``sysupgrade`` (an image for it can be built), ``tstat`` (Tstat is in its firmware),
``supervisor-control`` (the suite may stop and start the supervisor: only on a rig it runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig.inventory import EMULATED_BOARD, group_hosts, inventory_json
from rig.ssh import SshEndpoint

ALL_FEATURES = ("sysupgrade", "tstat", "supervisor-control")
# What a target lacking a feature needs to have it: the skip reason of tests gated by it.
FEATURE_FIXES = {
    "sysupgrade": "no image of it was built here (build/<inventory>/<host>/manifest.json); "
                  "build its firmware with playbooks/firmware.yml",
    "tstat": "its firmware has no Tstat (manifest.json lists it under omitted): put the source "
             "in the artifact cache with `probeforge-artifacts fetch tstat-source` (or make it "
             "with git archive, docs/artifacts.md) and build again; a real target lists "
             "tstat in hil_features",
    "supervisor-control": "the suite does not run its supervisor (only the emulated rig's)",
    "glimpse_console": "its image has no GLIMPSE console (the generic manifest.json lists it "
                       "under omitted): put the source in the artifact cache with "
                       "`probeforge-artifacts fetch glimpse-source` and build the appliance "
                       "again; a real target lists glimpse_console in hil_features",
}
# Optional components of the appliance image (images/ubuntu-appliance/recipe.yml).
APPLIANCE_FEATURES = ("tstat", "glimpse_console")


@dataclass(frozen=True)
class HilTarget:
    name: str
    ssh: SshEndpoint
    flavour: str  # "emulated" or "openwrt"
    board: str
    source_ip4: str  # the probe's own address, as its capabilities' source.ip4 carries it
    supervisor_ip4: str  # the supervisor as the probe reaches it
    features: frozenset[str] = field(default_factory=frozenset)
    image_dir: Path | None = None  # build/<inventory>/<host>, when built here
    console_log: Path | None = None

    def manifest(self) -> dict[str, Any] | None:
        if self.image_dir is None or not (self.image_dir / "manifest.json").is_file():
            return None
        data: dict[str, Any] = json.loads((self.image_dir / "manifest.json").read_text())
        return data


def load_targets(inventory: Path, *, ansible_inventory: str, build_dir: Path,
                 rig_state: Path | None, hosts: list[str] | None = None) -> list[HilTarget]:
    """Every MiniProbe of ``inventory`` (or those named in ``hosts``)."""
    data = inventory_json(inventory, ansible_inventory)
    hostvars: dict[str, dict[str, Any]] = data.get("_meta", {}).get("hostvars", {})
    names = group_hosts(data, "miniprobes")
    if hosts:
        unknown = sorted(set(hosts) - set(names))
        if unknown:
            raise ValueError(f"{', '.join(unknown)} not in group miniprobes of {inventory}: "
                             "fix --hil-hosts")
        names = [n for n in names if n in hosts]
    targets = []
    for name in names:
        variables = hostvars.get(name, {})
        board = str(variables.get("firmware_board", ""))
        emulated = board == EMULATED_BOARD
        image_dir = build_dir / name
        features = set(variables.get("hil_features", ALL_FEATURES if emulated else ()))
        if not emulated or rig_state is None:
            features.discard("supervisor-control")
        manifest_path = image_dir / "manifest.json"
        if manifest_path.is_file():
            omitted = {o["component"] for o in json.loads(manifest_path.read_text())["omitted"]}
            if "tstat" in omitted:
                features.discard("tstat")
        else:
            features.discard("sysupgrade")
        targets.append(HilTarget(
            name=name,
            ssh=_ssh_endpoint(inventory, name, variables),
            flavour=str(variables.get("firmware_flavour", "openwrt")),
            board=board,
            source_ip4=str(variables.get("rig_guest_address", variables.get("ansible_host"))),
            supervisor_ip4=str(variables.get("mplane_supervisor_address", "")),
            features=frozenset(features),
            image_dir=image_dir if image_dir.is_dir() else None,
            console_log=(rig_state / name / "console.log") if rig_state and emulated else None,
        ))
    return targets


@dataclass(frozen=True)
class ApplianceTarget:
    name: str
    ssh: SshEndpoint
    client_address: str  # its supervisor's client port, as the operator reaches it
    client_port: int
    features: frozenset[str] = field(default_factory=frozenset)
    console_log: Path | None = None


def _ssh_endpoint(inventory: Path, name: str, variables: dict[str, Any]) -> SshEndpoint:
    # ansible-inventory does not template: the one template the rig uses is expanded here.
    key = str(variables.get("ansible_ssh_private_key_file", "")).replace(
        "{{ inventory_dir }}", str(inventory)) or None
    return SshEndpoint(str(variables.get("ansible_host", name)),
                       int(variables.get("ansible_port", 22)), Path(key) if key else None,
                       str(variables.get("ansible_user", "root")))


def load_appliances(inventory: Path, *, ansible_inventory: str, build_dir: Path,
                    rig_state: Path | None) -> list[ApplianceTarget]:
    """Every virtual appliance of ``inventory`` (group ``appliances``). Its optional
    components come from the generic image's manifest when it was built here (else from
    ``hil_features``)."""
    data = inventory_json(inventory, ansible_inventory)
    hostvars: dict[str, dict[str, Any]] = data.get("_meta", {}).get("hostvars", {})
    found = []
    for name in group_hosts(data, "appliances"):
        variables = hostvars.get(name, {})
        features = set(variables.get("hil_features", APPLIANCE_FEATURES))
        seed_manifest = build_dir / name / "manifest.json"
        if seed_manifest.is_file():
            generic = Path(json.loads(seed_manifest.read_text())["generic"]["directory"])
            omitted = json.loads((generic / "manifest.json").read_text())["omitted"]
            features -= {o["component"] for o in omitted}
        found.append(ApplianceTarget(
            name=name, ssh=_ssh_endpoint(inventory, name, variables),
            client_address=str(variables.get("ansible_host", name)),
            client_port=int(variables.get("mplane_supervisor_client_port", 8888)),
            features=frozenset(features),
            console_log=(rig_state / name / f"{name}-console.log") if rig_state else None))
    return found
