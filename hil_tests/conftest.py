# SPDX-License-Identifier: Apache-2.0
"""The HIL suite's targets, supervisor access and artifacts.

Without ``--hil-inventory`` the suite brings up the emulated rig itself: a copy of
``inventory/virtual-rig`` in a temporary directory (its own PKI, free loopback ports, its own
build directory), the firmware and the supervisor appliance built by ``playbooks/rig.yml``,
the appliance and every emulated board started by :class:`rig.testbed.Testbed`, and torn down
at the end. Tests take a MiniProbe (``target``) or a virtual appliance (``appliance``). With
``--hil-inventory DIR`` it runs against whatever that inventory describes and is already up
(real routers, a test plant): nothing is started or stopped there.

Per target, ``<--hil-artifacts>/<host>/results.json`` records each test's outcome and the
serial console log is copied beside it (CI keeps the directory).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hil_tests.targets import (
    FEATURE_FIXES,
    ApplianceTarget,
    HilTarget,
    load_appliances,
    load_targets,
)
from probe_daemon.registry import declared_elements, registry_json
from rig.cli import build
from rig.inventory import load_plan
from rig.mplane_ri import (
    TLSFiles,
    capabilities_by_token,
    default_cache_dir,
    ri_venv,
    run_specification,
)
from rig.testbed import Testbed, device_of
from tests.support.rig_inventory import rig_inventory_copy

REPO = Path(__file__).resolve().parents[1]
RIG_INVENTORY = REPO / "inventory" / "virtual-rig"
_results: dict[str, list[dict[str, Any]]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop targets")
    group.addoption("--hil-inventory", type=Path, default=None,
                    help="run against this inventory's MiniProbes, already up (default: bring "
                         "up the emulated rig of inventory/virtual-rig for the run)")
    group.addoption("--hil-hosts", default="",
                    help="comma-separated MiniProbes to test (default: all of them)")
    group.addoption("--hil-artifacts", type=Path, default=REPO / "test-artifacts" / "hil",
                    help="where results.json and console logs go, per target")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "feature(name): needs a target feature "
                                       "(sysupgrade, tstat, supervisor-control)")


def _ansible(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _selected_hosts(config: pytest.Config) -> list[str]:
    return [h for h in str(config.getoption("--hil-hosts")).split(",") if h]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for argument, group in (("target_name", "miniprobes"), ("appliance_name", "appliances")):
        if argument in metafunc.fixturenames:
            inventory = metafunc.config.getoption("--hil-inventory") or RIG_INVENTORY
            from rig.inventory import group_hosts, inventory_json

            names = group_hosts(inventory_json(inventory, _ansible("ansible-inventory")),
                                group)
            wanted = _selected_hosts(metafunc.config)
            metafunc.parametrize(argument, [n for n in names if not wanted or n in wanted])


@dataclass
class HilEnv:
    inventory: Path
    targets: dict[str, HilTarget]
    appliances: dict[str, ApplianceTarget]
    client_url: str
    operator: TLSFiles
    registry: Path | None
    venv: Path
    testbed: Testbed | None

    def capabilities(self, target: HilTarget) -> dict[str, dict[str, Any]]:
        """The target's capabilities as the operator sees them through the supervisor, by
        token: those that name the target in their source.device metadata."""
        every = capabilities_by_token(self.venv, self.client_url, tls=self.operator,
                                      registry_preload=self.registry)
        return {token: cap for token, cap in every.items() if device_of(cap) == target.name}

    def wait_capabilities(self, target: HilTarget, labels: set[str],
                          timeout: float = 180) -> dict[str, str]:
        """Token by label of the target's capabilities, once ``labels`` are all there."""
        deadline = time.monotonic() + timeout
        while True:
            seen = {cap["label"]: token for token, cap in self.capabilities(target).items()}
            if labels <= set(seen) or time.monotonic() > deadline:
                return seen
            time.sleep(3)

    def run(self, token: str, params: dict[str, str], when: str,
            timeout: float = 120) -> dict[str, Any]:
        reply: dict[str, Any] = run_specification(
            self.venv, self.client_url, token, params, tls=self.operator, when=when,
            timeout=timeout, registry_preload=self.registry)
        return reply


@pytest.fixture(scope="session")
def hil_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[HilEnv]:
    given = request.config.getoption("--hil-inventory")
    testbed = None
    if given is None:
        work = tmp_path_factory.mktemp("hil-rig")
        inventory = rig_inventory_copy(work)
        build_dir = work / "build"
        plan = load_plan(inventory, _ansible("ansible-inventory"))
        testbed = Testbed(plan, repo=REPO, build_dir=build_dir,
                          progress=lambda line: print(f"hil: {line}", flush=True))
        testbed.state.mkdir(parents=True, exist_ok=True)
        build(inventory)
    else:
        inventory = Path(given).resolve()
        build_dir = REPO / "build" / inventory.name
        plan = load_plan(inventory, _ansible("ansible-inventory"))
    pki = inventory / ".state" / "pki"
    registry = tmp_path_factory.mktemp("hil-registry") / "probeforge-registry.json"
    registry.write_text(registry_json(declared_elements()))
    try:
        if testbed is not None:
            testbed.start_dns()
            testbed.start_supervisor()
            testbed.start_boards()
            testbed.wait_registered()
        targets = load_targets(inventory, ansible_inventory=_ansible("ansible-inventory"),
                               build_dir=build_dir,
                               rig_state=testbed.state if testbed else None,
                               hosts=_selected_hosts(request.config) or None)
        appliances = load_appliances(inventory, ansible_inventory=_ansible("ansible-inventory"),
                                     build_dir=build_dir,
                                     rig_state=testbed.state if testbed else None)
        client_url = (testbed.client_url if testbed
                      else f"https://{_supervisor_address(inventory)}:{plan.client_port}")
        yield HilEnv(inventory, {t.name: t for t in targets},
                     {a.name: a for a in appliances}, client_url,
                     TLSFiles.from_pki_bundle(pki / "hosts" / plan.operator), registry,
                     ri_venv(default_cache_dir()), testbed)
    finally:
        if testbed is not None:
            testbed.stop()
            # The serial consoles, whole (every boot), beside each target's results.
            out = Path(request.config.getoption("--hil-artifacts"))
            consoles = [(p.name, testbed.state / p.name / "console.log") for p in plan.probes]
            consoles.append((plan.supervisor, testbed.state / plan.supervisor
                             / f"{plan.supervisor}-console.log"))
            for name, console in consoles:
                if console.is_file():
                    (out / name).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(console, out / name / "console.log")


def _supervisor_address(inventory: Path) -> str:
    from rig.inventory import group_hosts, inventory_json

    data = inventory_json(inventory, _ansible("ansible-inventory"))
    name = group_hosts(data, "supervisors")[0]
    return str(data["_meta"]["hostvars"][name].get("ansible_host", name))


def _skip_without_features(name: str, features: frozenset[str],
                           request: pytest.FixtureRequest) -> None:
    for marker in request.node.iter_markers("feature"):
        missing = sorted(set(marker.args) - features)
        if missing:
            pytest.skip(f"{name} lacks " + "; ".join(
                f"{feature}: {FEATURE_FIXES.get(feature, 'not in its hil_features')}"
                for feature in missing))


@pytest.fixture
def target(hil_env: HilEnv, target_name: str, request: pytest.FixtureRequest) -> HilTarget:
    found = hil_env.targets.get(target_name)
    if found is None:
        pytest.skip(f"{target_name} is not a target of this run")
    _skip_without_features(target_name, found.features, request)
    return found


@pytest.fixture
def appliance(hil_env: HilEnv, appliance_name: str,
              request: pytest.FixtureRequest) -> ApplianceTarget:
    found = hil_env.appliances.get(appliance_name)
    if found is None:
        pytest.skip(f"{appliance_name} is not an appliance of this run")
    _skip_without_features(appliance_name, found.features, request)
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    report: pytest.TestReport = yield
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec else {}
    name = params.get("target_name") or params.get("appliance_name")
    if name is not None and (report.when == "call" or report.failed or report.skipped):
        _results.setdefault(name, []).append({
            "test": item.name, "phase": report.when, "outcome": report.outcome,
            "seconds": round(report.duration, 2),
            **({"detail": str(report.longrepr)[-2000:]} if report.failed or report.skipped
               else {}),
        })
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _results:
        return
    out = Path(session.config.getoption("--hil-artifacts"))
    for name, rows in _results.items():
        directory = out / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "results.json").write_text(json.dumps(
            {"target": name, "tests": rows,
             "passed": sum(r["outcome"] == "passed" for r in rows),
             "failed": sum(r["outcome"] == "failed" for r in rows)}, indent=2) + "\n")
