# SPDX-License-Identifier: Apache-2.0
"""playbooks/rig.yml (SSH key, PKI, firmware) on a copy of the virtual rig with three
emulated MiniProbes, for real: per host an image, manifest.json and SHA256SUMS; a second run
changes nothing and rewrites nothing (outputs and overlays); a rebuild elsewhere is
bit-identical; the shared parts carry no private key, and each image carries its own host's
key and no other's; a bad variable stops the play before anything is built."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from firmware.image import extract_part, read_header
from firmware.recipe import load_recipe
from tests.conftest import REPO
from tests.support.rig_inventory import rig_inventory_copy

pytestmark = [pytest.mark.slow, pytest.mark.ansible,
              pytest.mark.skipif(os.geteuid() != 0, reason="the firmware build needs root")]
HOSTS = ("probe-01", "probe-02", "probe-03")
PARTS = ("kernel", "initramfs", "rootfs", "host")
# A PEM private key with its body (tools such as dropbearconvert carry the bare marker text).
PEM_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\s+[A-Za-z0-9+/=\s]{64,}")


def _playbook(inventory: Path, name: str, *extra: str,
              rc: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i",
                           str(inventory), str(REPO / "playbooks" / name), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert done.returncode == rc, done.stdout[-6000:] + done.stderr[-2000:]
    return done


def _recap(output: str) -> dict[str, int]:
    changed = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) > 2 and words[1] == ":" and words[0] in HOSTS:
            changed[words[0]] = int(next(w for w in words if w.startswith("changed=")
                                         ).split("=")[1])
    return changed


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("firmware-playbook")
    inventory = rig_inventory_copy(work, extra_probes=1)
    first = _playbook(inventory, "rig.yml")
    return work, inventory, first


def test_outputs_per_host(built):
    work, _, _ = built
    version = load_recipe().version
    for host in HOSTS:
        out = work / "build" / host
        image = out / f"probeforge-{version}-qemu-malta-mipsel-{host}-sysupgrade.bin"
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [image.name, "manifest.json", "SHA256SUMS"])
        assert image.stat().st_mode & 0o077 == 0  # it holds the host's private key
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        header = read_header(image)
        assert (manifest["host"], manifest["board"], manifest["version"], manifest["build"]) \
            == (host, "qemu-malta-mipsel", version, header.build) == \
            (header.host, header.board, header.version, header.build)
        assert [p["name"] for p in manifest["parts"]] == list(PARTS)
        names = {p["name"] for p in manifest["packages"]}
        assert {"busybox-static", "dropbear-bin", "python3.11-minimal"} <= names
        assert all(p["sha256"] and p["version"] for p in manifest["packages"])
        assert manifest["inputs"] and all(len(v) == 64 for v in manifest["inputs"].values())
        # Tstat's source is in no artifact cache here: left out, and said so.
        omitted = {o["component"]: o for o in manifest["omitted"]}
        if "tstat" in omitted:
            assert "probeforge-artifacts" in omitted["tstat"]["fix"]


def _stamps(work: Path) -> dict[Path, tuple[int, int]]:
    """Inode and mtime of every output and every file of every host's overlay."""
    paths = [p for host in HOSTS for p in [*(work / "build" / host).iterdir(),
                                           *(work / "build" / ".overlay" / host).rglob("*")]]
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def test_second_run_changes_and_rewrites_nothing(built):
    work, inventory, _ = built
    before = _stamps(work)
    again = _playbook(inventory, "rig.yml")
    assert _recap(again.stdout) == dict.fromkeys(HOSTS, 0), again.stdout[-4000:]
    assert _stamps(work) == before


def test_bad_variable_stops_before_anything_is_built(built):
    work, inventory, _ = built
    before = _stamps(work)
    done = _playbook(inventory, "firmware.yml", "-e", "probe_daemon_log_level=loud", rc=2)
    assert "probe_daemon_log_level" in done.stdout and "loud" in done.stdout, done.stdout[-4000:]
    assert "Ensure the host's overlay and image are built" not in done.stdout
    assert _stamps(work) == before


def test_overlay_is_what_the_inventory_renders(built):
    work, inventory, _ = built
    overlay = work / "build" / ".overlay" / "probe-03"
    conf = (overlay / "etc/mplane/probe.conf").read_text()
    assert "device = probe-03" in conf and "max_hops = 3" in conf
    assert (overlay / "etc/mplane/certs/probe.crt").read_bytes() == (
        inventory / ".state" / "pki" / "hosts" / "probe-03" / "cert.pem").read_bytes()
    rig_key = (inventory / ".state" / "ssh" / "id_ed25519.pub").read_text().strip()
    assert (overlay / "etc/dropbear/authorized_keys").read_text() == rig_key + "\n"
    script = overlay / "etc/uci-defaults/90-probeforge-hostname"
    assert "name='probe-03'" in script.read_text() and script.stat().st_mode & 0o111


def test_rebuild_elsewhere_is_bit_identical(built, tmp_path):
    work, _, _ = built
    image = next((work / "build" / "probe-02").glob("*.bin"))
    done = subprocess.run([sys.executable, "-m", "firmware", "image", "--board",
                           "qemu-malta-mipsel", "--host", "probe-02", "--overlay",
                           str(work / "build" / ".overlay" / "probe-02"), "--out",
                           str(tmp_path / "probe-02"), "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    again = Path(json.loads(done.stdout)["image"])
    assert again.read_bytes() == image.read_bytes()


def _unsquash(part: Path, into: Path) -> Path:
    subprocess.run(["unsquashfs", "-no-progress", "-d", str(into), str(part)], check=True,
                   capture_output=True)
    return into


def test_only_each_hosts_own_image_carries_its_key(built, tmp_path):
    work, inventory, _ = built
    keys = {host: (inventory / ".state" / "pki" / "hosts" / host / "key.pem").read_bytes()
            for host in HOSTS}
    shared: dict[str, set[str]] = {name: set() for name in PARTS[:3]}
    for host in HOSTS:
        image = next((work / "build" / host).glob("*.bin"))
        for name in PARTS:
            part = tmp_path / f"{host}-{name}"
            extract_part(image, name, part)
            if name in shared:
                shared[name].add(_sha256(part))
        layer = _unsquash(tmp_path / f"{host}-host", tmp_path / f"{host}-layer")
        key = layer / "etc/mplane/certs/probe.key"
        assert key.read_bytes() == keys[host]
        assert key.stat().st_mode & 0o777 == 0o600
        others = [h for h in HOSTS if h != host]
        for path in layer.rglob("*"):
            if path.is_file():
                assert not any(keys[o] in path.read_bytes() for o in others), path
        release = dict(line.split("=", 1) for line in
                       (layer / "etc/probeforge-release").read_text().split())
        assert release["host"] == host
    # The kernel, the initramfs and the root filesystem are the same bytes for every host…
    assert all(len(digests) == 1 for digests in shared.values()), shared
    # …and hold no private key at all.
    base = _unsquash(tmp_path / "probe-01-rootfs", tmp_path / "base-tree")
    for path in base.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert not PEM_KEY.search(path.read_bytes()), path
    initramfs = gzip.decompress((tmp_path / "probe-01-initramfs").read_bytes())
    assert not PEM_KEY.search(initramfs)
    assert not PEM_KEY.search((tmp_path / "probe-01-kernel").read_bytes())
