# SPDX-License-Identifier: Apache-2.0
"""The project's roles applied to an image root through Ansible's chroot connection.

The builder writes a one-play playbook from the recipe's role list (``include_role`` each,
with its ``tasks_from`` and ``vars``) and runs ``ansible-playbook`` from the checkout (its
ansible.cfg: roles and collections path). The generic image's play has its own one-host
inventory; a host's seed play runs against the deployment's inventory, limited to the host,
with the connection pointed at the staging root by extra variables (which beat the
inventory's). Task names are passed on as progress; a failure is one line naming the task.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from appliance import ApplianceError
from appliance.recipe import REPO, RoleStep

CHROOT_VARS = {"ansible_connection": "community.general.chroot",
               "ansible_python_interpreter": "/usr/bin/python3"}


def playbook(steps: Sequence[RoleStep], hosts: str, name: str) -> list[dict[str, Any]]:
    return [{"name": name, "hosts": hosts, "gather_facts": False,
             "tasks": [step.task() for step in steps]}]


def ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    raise ApplianceError(f"no ansible-playbook beside {sys.executable}: run the build with "
                         "the project's venv (.venv/bin/python -m appliance)")


def _original_address(inventory: Path, host: str) -> str:
    """The host's ``ansible_host`` in ``inventory`` (its name when unset)."""
    result = subprocess.run([str(Path(ansible_playbook()).with_name("ansible-inventory")),
                             "-i", str(inventory), "--host", host], capture_output=True,
                            text=True, cwd=REPO)
    if result.returncode != 0:
        raise ApplianceError(f"host {host} is not in the inventory {inventory}: "
                             f"{result.stderr.strip()[-200:]} (fix --inventory/--host)")
    return str(json.loads(result.stdout).get("ansible_host", host))


def run_play(steps: Sequence[RoleStep], work: Path, *, root: Path, name: str,
             inventory: Path | None = None, host: str = "appliance",
             extra_vars: dict[str, Any] | None = None,
             progress: Callable[[str], None] = print, label: str = "provision") -> int:
    """Apply ``steps`` to ``root`` (mounted for chroot); the number of changed tasks."""
    work.mkdir(parents=True, exist_ok=True)
    play = work / f"{label.replace(' ', '-')}.yml"
    play.write_text(yaml.safe_dump(playbook(steps, host, name), sort_keys=False))
    # The connection is the host's own variable, in an inventory source after the
    # deployment's (later sources win): as an extra variable it would also apply to the
    # tasks the roles delegate to localhost.
    connection: dict[str, Any] = {**CHROOT_VARS, "ansible_host": str(root)}
    sources = []
    if inventory is not None:
        sources.append(str(inventory))
        # Roles read ansible_host as the host's address where nothing else is set.
        address = _original_address(inventory, host)
        connection["supervisor_address"] = (
            "{{ mplane_supervisor_address | default('" + address + "') }}")
    override = work / f"{label.replace(' ', '-')}-inventory.json"
    override.write_text(json.dumps({"all": {"hosts": {host: connection}}}))
    sources.append(str(override))
    values = work / f"{label.replace(' ', '-')}-vars.json"
    values.write_text(json.dumps(extra_vars or {}))
    command = [ansible_playbook(), *(a for s in sources for a in ("-i", s)), str(play),
               "--limit", host, "-e", f"@{values}"]
    env = {**os.environ, "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0",
           "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "0", "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    progress(f"{label}: ansible-playbook {len(steps)} role steps into {root}")
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    assert proc.stdout is not None
    output: list[str] = []
    task = ""
    for line in proc.stdout:
        output.append(line)
        match = re.match(r"^TASK \[(.*)\] \**$", line.strip())
        if match:
            task = match.group(1)
            progress(f"{label}:   {task}")
    code = proc.wait()
    log = work / f"{label.replace(' ', '-')}.log"
    log.write_text("".join(output))
    recap = [line for line in output if re.search(rf"^{re.escape(host)}\s+:\s+ok=", line)]
    changed = int(m.group(1)) if recap and (m := re.search(r"changed=(\d+)", recap[-1])) else 0
    if code != 0:
        fatal = [i for i, line in enumerate(output) if line.startswith(("fatal:", "ERROR!",
                                                                          "[ERROR]"))]
        detail = " ".join(line.strip() for line in output[fatal[-1]:fatal[-1] + 6]) \
            if fatal else (output[-1].strip() if output else "")
        match = re.search(r'"msg": "([^"]*)"|msg: (.*)', detail)
        detail = (match.group(1) or match.group(2) if match else detail)[:400]
        raise ApplianceError(f"{label}: task {task!r} failed: {detail} (full log: {log})")
    progress(f"{label}: done in {time.monotonic() - started:.0f} s, {changed} changed")
    return changed
