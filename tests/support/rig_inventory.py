# SPDX-License-Identifier: Apache-2.0
"""A throw-away copy of inventory/virtual-rig for tests: its own PKI passphrase, free loopback
ports, its own build directory, so that no test touches a rig the developer runs."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RIG_INVENTORY = REPO / "inventory" / "virtual-rig"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rig_inventory_copy(directory: Path, extra_probes: int = 0) -> Path:
    """inventory/virtual-rig in ``directory``, with ``extra_probes`` more emulated MiniProbes
    (probe-03, …); its build directory is ``directory/build``."""
    inventory = directory / "virtual-rig"
    shutil.copytree(RIG_INVENTORY, inventory, ignore=shutil.ignore_patterns(".state"))
    # host_vars outrank the copied group_vars, so every host gets the overrides.
    common = {
        "pki_ca_passphrase_file": str(directory / "ca.passphrase"),
        "firmware_output_dir": str(directory / "build"),
        "appliance_output_dir": str(directory / "build"),
        "rig_dns_port": _free_port(),
    }
    document = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts = document["all"]["children"]
    miniprobes = hosts["probes"]["children"]["miniprobes"]["hosts"]
    for number in range(len(miniprobes) + 1, len(miniprobes) + 1 + extra_probes):
        miniprobes[f"probe-{number:02d}"] = {"ansible_host": "127.0.0.1",
                                             "rig_guest_address": f"10.0.2.{20 + number}"}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    per_host: dict[str, dict[str, Any]] = {}
    for name in hosts["supervisors"]["hosts"]:
        per_host[name] = {"mplane_supervisor_client_port": _free_port(),
                          "mplane_supervisor_component_port": _free_port(),
                          # SSH and web console of the supervisor appliance
                          "ansible_port": _free_port(), "appliance_console_port": _free_port()}
    for name in miniprobes:
        per_host[name] = {"ansible_port": _free_port(), "rig_console_port": _free_port()}
    for name in hosts["clients"]["hosts"]:
        per_host[name] = {}
    host_vars = inventory / "host_vars"
    host_vars.mkdir(exist_ok=True)
    for name, variables in per_host.items():
        (host_vars / f"{name}.yml").write_text(yaml.safe_dump({**common, **variables}))
    return inventory
