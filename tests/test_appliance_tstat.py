# SPDX-License-Identifier: Apache-2.0
"""Tstat inside the virtual appliance, where its pinned source is in the artifact cache (CI has
none: then the module is skipped, naming the fix).

The generic appliance is built with Tstat (role ``tstat`` through the chroot connection, from
the source tarball) into a cache and an output directory of this test's own, so the shared
generic images stay as they are; the .debs are taken from the shared cache. Booted with a
host's seed, Tstat runs from boot on the appliance's interface (eth0 on every hypervisor:
the image boots with ``net.ifnames=0``); with ``log_tcp_complete`` switched on, downloads from
a server in the appliance, made from the host through a forwarded port, are logged with the
host as client (10.0.2.2 in QEMU's user network), the server's port, the body's bytes and a
FIN each way.

About 9 minutes here under TCG (Tstat's native build in the image about 1 minute).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifacts import verified_path
from rig.appliance import ApplianceVM, boot_files
from tests.conftest import REPO
from tests.support.appliance import CLIENT_PORT, HOST, write_inventory
from tests.support.targets import free_port, run_playbook
from tests.support.tstat_logs import parse_tcp_complete

pytestmark = [pytest.mark.slow, pytest.mark.appliance, pytest.mark.ansible,
              pytest.mark.skipif(os.geteuid() != 0, reason="the build needs root")]

LOG_DIR = "/var/log/tstat"
RUNTIME_CONF = "/etc/tstat/runtime.conf"
SERVER_PORT = 8000
BODY = 300_007  # an odd size that stands out in the log
DOWNLOADS = 3


def _tstat_source() -> str | None:
    try:
        return verified_path("tstat-source")
    except Exception:  # any reason it is not there is a reason to skip
        return None


def _appliance(*args: str, log: Path) -> dict[str, str]:
    with log.open("a") as out:
        done = subprocess.run([sys.executable, "-m", "appliance", *args, "--json"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=out, text=True, timeout=2400)
    assert done.returncode == 0, log.read_text()[-4000:]
    result: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApplianceVM, dict]]:
    if _tstat_source() is None:
        pytest.skip("no Tstat source in the artifact cache: put it there with "
                    "`probeforge-artifacts fetch tstat-source` (or make it with git archive, "
                    "docs/artifacts.md) and run again")
    work = tmp_path_factory.mktemp("appliance-tstat")
    cache = work / "cache"
    shared_debs = REPO / ".cache" / "appliance" / "debs"
    if shared_debs.is_dir():
        shutil.copytree(shared_debs, cache / "debs", copy_function=os.link)
    log = work / "build.log"
    generic = Path(_appliance("image", "--cache", str(cache), "--out", str(work / "generic"),
                              log=log)["directory"])
    manifest = json.loads((generic / "manifest.json").read_text())
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    inventory = write_inventory(work / "inventory", key.with_suffix(".pub"))
    pki = run_playbook(REPO / "playbooks" / "pki.yml", inventory, timeout=600)
    assert pki.returncode == 0, pki.report()
    seed = Path(_appliance("seed", "--cache", str(cache), "--inventory", str(inventory),
                           "--host", HOST, "--out", str(work / "seed"), "--generic",
                           str(generic), log=log)["seed"])
    with ApplianceVM(generic / f"{manifest['name']}.qcow2", work, key=key, seed=seed,
                     kernel=boot_files(generic, cache), name="tstat",
                     forwards={CLIENT_PORT: free_port(), SERVER_PORT: free_port()}) as vm:
        yield vm, manifest


def _tstat_processes(vm: ApplianceVM) -> list[list[str]]:
    text = vm.ssh("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; "
                  "done 2>/dev/null").stdout
    return [line.split() for line in text.split("\n")
            if line.split() and line.split()[0].endswith("/tstat")]


def test_the_image_has_tstat(booted):
    _, manifest = booted
    assert "tstat" in manifest["components"]
    assert "tstat" not in {o["component"] for o in manifest["omitted"]}


def test_tstat_runs_on_the_appliances_interface_from_boot(booted):
    vm, _ = booted
    deadline = time.monotonic() + 120
    while not _tstat_processes(vm) and time.monotonic() < deadline:
        time.sleep(3)
    captures = _tstat_processes(vm)
    assert captures, vm.ssh("systemctl status tstat; journalctl -b -u tstat -n 30").stdout
    words = captures[0]
    assert "-l" in words and words[words.index("-i") + 1] == "eth0", words
    assert words[words.index("-s") + 1] == LOG_DIR, words
    assert vm.ssh("ip -o link show eth0").returncode == 0


def test_tstat_logs_downloads_from_the_appliance(booted):
    vm, _ = booted
    # Fresh configuration at start: a restart takes the switch at once (a running Tstat
    # would take a minute or more, hil_tests/test_tstat.py).
    vm.ssh(f"sed -i 's/^log_tcp_complete = 0/log_tcp_complete = 1/' {RUNTIME_CONF} && "
           "systemctl restart tstat")
    assert "log_tcp_complete = 1" in vm.ssh(f"cat {RUNTIME_CONF}").stdout
    vm.ssh(f"mkdir -p /run/www && head -c {BODY} /dev/zero > /run/www/big && "
           f"systemd-run --unit=pf-www python3 -m http.server {SERVER_PORT} -d /run/www")
    url = f"http://127.0.0.1:{vm.port(SERVER_PORT)}/big"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                assert len(response.read()) == BODY
            break
        except OSError:
            assert time.monotonic() < deadline, vm.ssh("systemctl status pf-www").stdout
            time.sleep(1)
    for _ in range(DOWNLOADS - 1):
        with urllib.request.urlopen(url, timeout=30) as response:
            assert len(response.read()) == BODY
    # SIGINT (the unit's stop) makes Tstat flush its logs.
    vm.ssh("systemctl stop tstat")
    text = vm.ssh(f"cat {LOG_DIR}/*/log_tcp_complete").stdout
    ours = [r for r in parse_tcp_complete(text)
            if r.get("s_port") == str(SERVER_PORT) and int(r.get("s_bytes_uniq", "0")) >= BODY]
    assert len(ours) >= DOWNLOADS, text[-3000:]
    for flow in ours:
        # The host is the client (QEMU's user network gives it 10.0.2.2), the appliance the
        # server on its own address; the request went in, the body came out, both closed.
        assert flow["c_ip"] == "10.0.2.2", flow
        assert int(flow["c_bytes_uniq"]) > 0, flow
        assert BODY <= int(flow["s_bytes_uniq"]) < BODY + 1024, flow
        assert int(flow["c_fin_cnt"]) >= 1 and int(flow["s_fin_cnt"]) >= 1, flow
