# SPDX-License-Identifier: Apache-2.0
import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pki import Deployment, PKIState, sync

REPO = Path(__file__).resolve().parents[1]
PASSPHRASE = b"correct horse battery staple"

RIG_REQUEST: dict[str, Any] = {
    "deployment": "test-rig",
    "domains": ["test-rig.internal"],
    "networks": ["127.0.0.0/8", "::1/128"],
    "inventory_groups": ["all", "supervisors", "probes", "miniprobes", "clients"],
    "group_profiles": {"supervisors": "supervisor", "probes": "probe", "clients": "client"},
    "mplane_roles": {"operators": ["clients"], "supervisors": ["supervisors"]},
    "authorizations": {"ping-": ["operators"], "tstat-": ["operators"]},
    "hosts": [
        {"name": "supervisor", "groups": ["supervisors"], "address": "127.0.0.1"},
        {"name": "probe-01", "groups": ["probes", "miniprobes"], "address": "127.0.0.1"},
        {"name": "probe-02", "groups": ["probes", "miniprobes"], "address": "127.0.0.1"},
        {"name": "operator", "groups": ["clients"], "address": "127.0.0.1"},
    ],
}


def rig_request(**changes: Any) -> dict[str, Any]:
    request = copy.deepcopy(RIG_REQUEST)
    request.update(changes)
    return request


def openssl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=check)


def tree_snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file's bytes and every link's target under root: to prove nothing changed."""
    snap: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            snap[rel] = "->" + str(path.readlink())
        elif path.is_file():
            snap[rel] = path.read_bytes()
    return snap


@pytest.fixture
def state(tmp_path: Path) -> PKIState:
    return PKIState(tmp_path / "pki")


@pytest.fixture
def deployment() -> Deployment:
    return Deployment.from_request(rig_request())


@pytest.fixture
def issued(state: PKIState, deployment: Deployment) -> PKIState:
    sync(state, deployment, PASSPHRASE)
    return state
