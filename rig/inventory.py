# SPDX-License-Identifier: Apache-2.0
"""What the rig needs from an inventory: the supervisor's ports (and, when the supervisor is in
group ``appliances``, the loopback ports of the appliance the rig boots for it), each emulated
MiniProbe's loopback ports and guest address, the operator whose identity runs the measurement.

Read with ``ansible-inventory --list`` so that the inventory means exactly what it means to
the playbooks (groups, group_vars, host_vars merged by Ansible).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rig import RigError

# The emulated boards' board name; other miniprobes are real routers, not started here.
EMULATED_BOARD = "qemu-malta-mipsel"


@dataclass(frozen=True)
class RigProbe:
    name: str
    ssh_port: int
    console_port: int
    guest_address: str


@dataclass(frozen=True)
class RigAppliance:
    """The supervisor as a virtual appliance: its SSH and web console on 127.0.0.1."""

    ssh_port: int
    console_port: int


@dataclass(frozen=True)
class RigPlan:
    inventory: Path
    supervisor: str
    client_port: int
    component_port: int
    operator: str
    probes: tuple[RigProbe, ...]
    dns_port: int
    dns_domain: str
    # None: the RI supervisor runs on the host itself.
    appliance: RigAppliance | None = None

    @property
    def state_dir(self) -> Path:
        return self.inventory / ".state"


def inventory_json(inventory: Path, ansible_inventory: str) -> dict[str, Any]:
    if not inventory.is_dir():
        raise RigError(f"inventory {inventory} is not a directory: pass --inventory "
                       "inventory/virtual-rig or another inventory directory")
    done = subprocess.run([ansible_inventory, "-i", str(inventory), "--list"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RigError(f"ansible-inventory cannot read {inventory}: {last}")
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def group_hosts(data: dict[str, Any], group: str) -> list[str]:
    """Hosts of ``group`` and its children, in inventory order."""
    found: list[str] = []
    entry = data.get(group, {})
    for host in entry.get("hosts", []):
        found.append(host)
    for child in entry.get("children", []):
        found += [h for h in group_hosts(data, child) if h not in found]
    return found


def _port(host: str, variables: dict[str, Any], name: str) -> int:
    value = variables.get(name)
    if not isinstance(value, int) or not 0 < value < 65536:
        raise RigError(f"host {host}: {name} is {value!r}, not a TCP port: set it in the "
                       "inventory (each rig endpoint has a loopback port of its own)")
    return value


def load_plan(inventory: Path, ansible_inventory: str = "ansible-inventory") -> RigPlan:
    data = inventory_json(inventory, ansible_inventory)
    hostvars: dict[str, dict[str, Any]] = data.get("_meta", {}).get("hostvars", {})
    supervisors = group_hosts(data, "supervisors")
    if len(supervisors) != 1:
        raise RigError(f"the rig needs exactly one host in group supervisors, {inventory} has "
                       f"{len(supervisors)}: fix the inventory")
    supervisor = supervisors[0]
    operators = group_hosts(data, "clients")
    if not operators:
        raise RigError(f"the rig's measurement runs with an operator's identity, and {inventory}"
                       " has no host in group clients: add one")
    probes = []
    addresses: set[str] = set()
    ports: dict[int, str] = {}
    sup_vars = hostvars.get(supervisor, {})
    names = ["mplane_supervisor_client_port", "mplane_supervisor_component_port"]
    appliance = supervisor in group_hosts(data, "appliances")
    if appliance:
        names += ["ansible_port", "appliance_console_port"]
    for name in names:
        port = _port(supervisor, sup_vars, name)
        if port in ports:
            raise RigError(f"host {supervisor}: {name} {port} is also {ports[port]}: give every "
                           "rig endpoint its own port")
        ports[port] = f"{supervisor} {name}"
    for host in group_hosts(data, "miniprobes"):
        variables = hostvars.get(host, {})
        if variables.get("firmware_board") != EMULATED_BOARD:
            continue
        address = str(variables.get("rig_guest_address", ""))
        try:
            if ipaddress.ip_address(address) not in ipaddress.ip_network("10.0.2.0/24"):
                raise ValueError(address)
        except ValueError:
            raise RigError(f"host {host}: rig_guest_address {address!r} is not an address in "
                           "QEMU's user network 10.0.2.0/24: set one (e.g. 10.0.2.21)") from None
        if address in addresses:
            raise RigError(f"host {host}: rig_guest_address {address} is used twice: give each "
                           "emulated MiniProbe its own")
        addresses.add(address)
        probe = RigProbe(host, _port(host, variables, "ansible_port"),
                         _port(host, variables, "rig_console_port"), address)
        for port, what in ((probe.ssh_port, "ansible_port"),
                           (probe.console_port, "rig_console_port")):
            if port in ports:
                raise RigError(f"host {host}: {what} {port} is also {ports[port]}: give every "
                               "rig endpoint its own port")
            ports[port] = f"{host} {what}"
        probes.append(probe)
    if not probes:
        raise RigError(f"{inventory} has no emulated MiniProbe (a host in miniprobes with "
                       f"firmware_board {EMULATED_BOARD}): add one")
    dns_port = _port(supervisor, sup_vars, "rig_dns_port")
    if dns_port in ports:
        raise RigError(f"rig_dns_port {dns_port} is also {ports[dns_port]}: give it its own")
    domain = str(sup_vars.get("rig_dns_domain", ""))
    if not domain or " " in domain:
        raise RigError(f"rig_dns_domain {domain!r} is not a DNS domain: set one for the rig's "
                       "names (e.g. virtual-rig.internal)")
    return RigPlan(inventory.resolve(), supervisor,
                   sup_vars["mplane_supervisor_client_port"],
                   sup_vars["mplane_supervisor_component_port"], operators[0], tuple(probes),
                   dns_port, domain,
                   RigAppliance(sup_vars["ansible_port"], sup_vars["appliance_console_port"])
                   if appliance else None)
