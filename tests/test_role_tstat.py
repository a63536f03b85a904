# SPDX-License-Identifier: Apache-2.0
"""The tstat role for real: native build in a Debian root, live capture over SSH, cross build.

CI cannot reach upstream, so by default the role builds the stand-in of
``tests/support/upstream_fakes/tstat`` (same autotools interface, a libpcap ``tstat`` that
writes Tstat's log layout), packed under the pinned name ``tstat-92523dc.tar.gz`` with a
manifest override. ``PROBEFORGE_REAL_UPSTREAM=1`` runs the same tests on the real Tstat from
the artifact cache (see roles/tstat/README.md).

* chroot: the role (build dependencies from deb.debian.org with apt inside the root, .debs and
  package lists cached in ``.cache/tstat-role-test`` between runs) converges, then changes
  nothing on a second run; testinfra checks binary, configuration, unit, retention; the
  installed tstat analyses a generated pcap with the rendered configuration.
* SSH: the role converges on a live target; tstat started there (not by systemd, which does
  not run in these targets) captures connections made across the veth.
* cross: ``tasks_from: cross`` on the controller makes a MIPS32 little-endian binary; under
  qemu-mipsel-static (if installed) its output on the pcap equals the native build's.
"""

import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from probe_daemon.measurements.tstat import SECTIONS, read_settings
from tests.support.apt_cache import apt_cache_in, dpkg_unsafe_io, seed_apt_cache
from tests.support.debian_root import role_test_tarball
from tests.support.targets import ChrootTarget, PlaybookResult, SshTarget, run_playbook
from tests.support.upstream_fakes import artifact_env
from tests.support.upstream_fakes.pcap import sample_flows, write_pcap

REPO = Path(__file__).resolve().parents[1]
PRUNE = REPO / "roles/tstat/files/usr/local/sbin/tstat-prune"
APT_CACHE = REPO / ".cache" / "tstat-role-test"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="targets need root")

PLAYBOOK = """\
- name: Apply the tstat role
  hosts: targets
  gather_facts: true
  roles:
    - role: tstat
"""

CROSS_PLAYBOOK = """\
- name: Cross-build Tstat on the controller
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Cross-build
      ansible.builtin.include_role:
        name: tstat
        tasks_from: cross
"""

XOR = "0x01020304"
INTERNAL = ["192.168.10.0/24", "fc00::/7"]
ROLE_VARS = {
    "tstat_interface": "eth9",
    "tstat_service_state": "",
    "tstat_runtime": {"log_tcp_complete": 1},
    "tstat_internal_networks": INTERNAL,
    "tstat_anonymize": "xor",
    "tstat_anonymize_xor_mask": XOR,
    "tstat_retention_max_size_mb": 256,
}


def xor_ip(address: str, mask: str) -> str:
    value = int.from_bytes(socket.inet_aton(address), "big") ^ int(mask, 0)
    return socket.inet_ntoa(value.to_bytes(4, "big"))


def parse_log(text: str) -> list[dict[str, str]]:
    """Rows of a Tstat log by column name (header "#15#c_ip:1 c_port:2 ...")."""
    lines = text.splitlines()
    header = lines[0].lstrip("#")
    header = header.split("#", 1)[1] if "#" in header else header
    names = [field.rsplit(":", 1)[0] for field in header.split()]
    return [dict(zip(names, line.split(), strict=False)) for line in lines[1:] if line]


def flows_of(rows: list[dict[str, str]]) -> set[tuple[str, ...]]:
    return {(r["c_ip"], r["c_port"], r["s_ip"], r["s_port"], r["c_bytes_uniq"],
             r["s_bytes_uniq"]) for r in rows}


def log_tcp_complete(out: Path) -> str:
    found = sorted(out.glob("*.out/log_tcp_complete"))
    assert len(found) == 1, f"one log_tcp_complete expected under {out}: {found}"
    return found[0].read_text()


def playbook_env(workdir: Path) -> dict[str, str]:
    return artifact_env("tstat-source", "tstat", workdir)


def describe(result: PlaybookResult, what: str = "failed") -> str:
    """The tasks that failed (or changed) in a JSON-callback run, with their messages."""
    try:
        plays = json.loads(result.output)["plays"]
    except (ValueError, KeyError):
        return result.output[-4000:] + result.stderr[-3000:]
    found = []
    for play in plays:
        for task in play["tasks"]:
            for host, res in task["hosts"].items():
                if res.get(what):
                    detail = {k: res.get(k) for k in ("msg", "stderr", "stdout", "cmd")
                              if res.get(k)}
                    found.append(f"{host}: {task['task']['name']}: "
                                 f"{json.dumps(detail)[-3000:]}")
    return "\n".join(found) or result.stderr[-3000:]


def converge(workdir: Path, inventory: Path, env: dict[str, str], extra: dict[str, object],
             playbook: str = PLAYBOOK, twice: bool = True) -> tuple[PlaybookResult, ...]:
    """Run the role (twice: the second run must change nothing); return the results."""
    book = workdir / "tstat.yml"
    book.write_text(playbook)
    variables = workdir / "vars.json"
    variables.write_text(json.dumps(extra))
    first = run_playbook(book, inventory, "-e", f"@{variables}", env=env, timeout=1500)
    assert first.returncode == 0, describe(first)
    if not twice:
        return (first,)
    second = run_playbook(book, inventory, "-e", f"@{variables}", env=env, timeout=900)
    assert second.returncode == 0, describe(second)
    assert second.changed() == 0, describe(second, "changed")
    return first, second


@pytest.fixture(scope="module")
def pcap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pcap(tmp_path_factory.mktemp("pcap") / "flows.pcap", sample_flows(3))


@pytest.fixture(scope="module")
def chroot_role(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The role applied twice to a fresh Debian 12 root; the root stays for the tests."""
    if os.geteuid() != 0:
        pytest.skip("targets need root")
    workdir = tmp_path_factory.mktemp("tstat-chroot")
    env = playbook_env(workdir)
    tarball = role_test_tarball()
    with ChrootTarget(tarball, workdir, name="tstat-chroot") as target:
        began = time.monotonic()
        dpkg_unsafe_io(target.root)
        with apt_cache_in(APT_CACHE, target.root):
            first, second = converge(workdir, target.inventory_file(), env, ROLE_VARS)
        yield {"target": target, "first": first, "second": second, "env": env,
               "seconds": time.monotonic() - began}


# --- chroot ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_role_converges_and_a_second_run_changes_nothing(chroot_role):
    first, second = chroot_role["first"], chroot_role["second"]
    assert sum(s["changed"] for s in first.stats.values()) > 0
    assert {h: s["changed"] for h, s in second.stats.items()} == {"tstat-chroot": 0}, \
        describe(second, "changed")


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_binary_and_build_record_match_the_pinned_source(chroot_role):
    target = chroot_role["target"]
    host = target.testinfra_host()
    binary = host.file("/usr/local/bin/tstat")
    assert binary.is_file and binary.mode & 0o111
    text = host.file("/usr/local/share/tstat/probeforge-build").content_string
    record = dict(line.split("=", 1) for line in text.splitlines())
    source = Path(chroot_role["env"]["PROBEFORGE_ARTIFACT_CACHE"]) / "tstat-92523dc.tar.gz"
    from artifacts import sha256_file

    assert record["sha256"] == sha256_file(source)[0]
    assert record["source"] == "tstat-92523dc.tar.gz"
    # The build tree is gone, the tarball stays for the next comparison.
    assert not host.file("/usr/local/src/tstat-build").exists
    assert host.file("/usr/local/src/tstat-92523dc.tar.gz").is_file
    for package in ("build-essential", "autoconf", "automake", "libtool", "libpcap-dev"):
        assert host.package(package).is_installed, package


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_configuration_is_rendered_for_the_daemon_and_the_inventory(chroot_role):
    target = chroot_role["target"]
    conf = target.root / "etc/tstat/runtime.conf"
    values = read_settings(conf.read_bytes(), list(SECTIONS), conf)  # the daemon can edit each
    assert values == {key: "1" if key == "log_tcp_complete" else "0" for key in SECTIONS}
    assert stat.S_IMODE(conf.stat().st_mode) == 0o644 and conf.stat().st_uid == 0
    net = (target.root / "etc/tstat/net.conf").read_text().split("\n")
    assert [line for line in net if line and not line.startswith("#")] == INTERNAL
    options = (target.root / "etc/tstat/tstat.conf").read_text()
    for line in ("-s /var/log/tstat", "-T /etc/tstat/runtime.conf", "-N /etc/tstat/net.conf",
                 f"-A {XOR}"):
        assert f"\n{line}\n" in options


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_service_runs_the_live_capture_with_two_capabilities_and_is_enabled(chroot_role):
    target = chroot_role["target"]
    host = target.testinfra_host()
    unit = host.file("/etc/systemd/system/tstat.service").content_string
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.startswith("ExecStart=/usr/local/bin/tstat -l -i eth9 -s /var/log/tstat "
                                 "-T /etc/tstat/runtime.conf -N /etc/tstat/net.conf")
    assert "AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN\n" in unit
    assert "CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN\n" in unit
    assert "User=tstat\n" in unit
    assert host.file("/etc/systemd/system/multi-user.target.wants/tstat.service").is_symlink
    assert host.user("tstat").exists
    out = host.file("/var/log/tstat")
    assert out.is_directory and out.user == "tstat"
    verify = host.run("systemd-analyze verify --man=no /etc/systemd/system/tstat.service "
                      "/etc/systemd/system/tstat-prune.service "
                      "/etc/systemd/system/tstat-prune.timer")
    # Offline in a root without a running systemd, only unit syntax problems matter.
    assert "Unknown key" not in verify.stderr and "bad-setting" not in verify.stderr, \
        verify.stderr


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_retention_timer_and_script_are_installed(chroot_role):
    target = chroot_role["target"]
    host = target.testinfra_host()
    script = host.file("/usr/local/sbin/tstat-prune")
    assert script.is_file and script.mode == 0o755
    assert host.file("/etc/systemd/system/timers.target.wants/tstat-prune.timer").is_symlink
    service = host.file("/etc/systemd/system/tstat-prune.service").content_string
    assert ("ExecStart=/usr/local/sbin/tstat-prune --max-age-days 7 --max-size-mb 256 "
            "/var/log/tstat") in service
    assert "OnCalendar=*:0/15" in host.file("/etc/systemd/system/tstat-prune.timer").content_string
    # It runs in the root as the tstat user against the output directory.
    old = target.root / "var/log/tstat/2020_01_01_00_00.out"
    old.mkdir()
    (old / "log_tcp_complete").write_text("old\n")
    os.utime(old / "log_tcp_complete", (0, 0))
    os.chown(old, *_ids(target.root, "tstat"))
    os.chown(old / "log_tcp_complete", *_ids(target.root, "tstat"))
    done = host.run("setpriv --reuid=tstat --regid=tstat --init-groups /usr/local/sbin/tstat-prune "
                    "--max-age-days 7 /var/log/tstat")
    assert done.rc == 0, done.stderr
    assert not (old / "log_tcp_complete").exists()


def _ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"no user {user} in {root}")


def native_run(target: ChrootTarget, pcap: Path, name: str, *args: str) -> Path:
    """Run the installed tstat in the root on ``pcap`` with ``args``; its output directory."""
    inside = Path("/tmp") / name
    shutil.copy(pcap, target.root / "tmp" / pcap.name)
    target.run("/usr/local/bin/tstat", *args, "-s", str(inside), f"/tmp/{pcap.name}")
    return target.root / inside.relative_to("/")


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_installed_tstat_analyses_a_pcap_with_the_rendered_configuration(chroot_role, pcap):
    target = chroot_role["target"]
    # tstat.conf's options, with the output somewhere else.
    args = (target.root / "etc/tstat/tstat.conf").read_text().split("\n")
    args = [word for line in args if line and not line.startswith("#")
            for word in line.split()]
    index = args.index("-s")
    del args[index:index + 2]
    out = native_run(target, pcap, "configured", *args)
    rows = parse_log(log_tcp_complete(out))
    # Clients are internal: XOR-anonymized; the server is not.
    expected = {(xor_ip(f.client, XOR), str(f.client_port), f.server, str(f.server_port),
                 str(f.upload), str(f.download)) for f in sample_flows(3)}
    assert flows_of(rows) == expected


# --- live capture over SSH -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_live_capture_on_an_ssh_target(tmp_path):
    env = playbook_env(tmp_path)
    with SshTarget(role_test_tarball(), tmp_path, name="tstat-ssh", apt_proxy=True) as target:
        seed_apt_cache(APT_CACHE, target.root)
        dpkg_unsafe_io(target.root)
        live_vars = {**ROLE_VARS, "tstat_interface": target.veth_target,
                     "tstat_anonymize": "", "tstat_internal_networks": [f"{target.host}/32"]}
        # Idempotence is the chroot test's: one run here.
        converge(tmp_path, target.inventory_file(), env, live_vars, twice=False)
        pid = target.run("sh", "-c", shlex.join([
            "/usr/local/bin/tstat", "-l", "-i", target.veth_target, "-s", "/tmp/live",
            "-T", "/etc/tstat/runtime.conf", "-N", "/etc/tstat/net.conf"])
            + " >/tmp/tstat.out 2>&1 </dev/null & echo $!").strip()
        time.sleep(3)  # the capture is open
        assert target.run("sh", "-c", f"kill -0 {pid} && echo alive").strip() == "alive", \
            target.run("cat", "/tmp/tstat.out")
        ports = []
        for _ in range(3):
            with socket.create_connection((target.host, 22), timeout=10) as conn:
                ports.append(conn.getsockname()[1])
                assert conn.recv(64).startswith(b"SSH-")
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(4096):  # until sshd closes its side too
                    pass
        time.sleep(2)
        target.run("kill", "-INT", pid)
        for _ in range(100):
            if target.run("sh", "-c", f"kill -0 {pid} 2>/dev/null && echo alive || true") == "":
                break
            time.sleep(0.2)
        output = target.run("cat", "/tmp/tstat.out")
        text = target.run("sh", "-c", "cat /tmp/live/*.out/log_tcp_complete")
        rows = parse_log(text)
        seen = {(r["c_ip"], r["c_port"], r["s_ip"], r["s_port"]) for r in rows}
        for port in ports:
            assert (target.host_address, str(port), target.host, "22") in seen, output + text


# --- cross build -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_cross_build_for_mipsel(chroot_role, pcap, tmp_path):
    out_dir = tmp_path / "tstat-mipsel"
    cross_vars = {"tstat_cross_out_dir": str(out_dir),
                  "tstat_cross_cache_dir": str(REPO / ".cache" / "cross"),
                  "tstat_probeforge_dir": str(REPO), "tstat_python": sys.executable}
    inventory = tmp_path / "localhost.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    env = chroot_role["env"]
    converge(tmp_path, inventory, env, cross_vars, CROSS_PLAYBOOK)
    built = json.loads((out_dir / "build.json").read_text())
    assert built["elf"]["machine"] == 8 and built["elf"]["class"] == 32
    assert built["elf"]["byteorder"] == "little"
    assert "ELF 32-bit LSB" in built["elf"]["file"] and "MIPS32" in built["elf"]["file"]
    listing = subprocess.run(["tar", "tzf", out_dir / "tstat-mipsel.tar.gz"], check=True,
                             capture_output=True, text=True).stdout.split()
    assert "./usr/local/bin/tstat" in listing
    if shutil.which("qemu-mipsel-static") is None:
        pytest.skip("qemu-user-static not installed: output not compared with the native build")
    from builds.tstat_cross import run_staged

    emulated = tmp_path / "emulated"
    done = run_staged(out_dir, ["-s", str(emulated), str(pcap)], timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    native = native_run(chroot_role["target"], pcap, "plain")
    assert log_tcp_complete(emulated) == log_tcp_complete(native)


# --- fast checks of the retention script -----------------------------------------------------


def test_prune_script_is_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    result = subprocess.run(["shellcheck", str(PRUNE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def _file(path: Path, kib: int, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(kib * 1024))
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


def test_prune_removes_by_age_then_oldest_first_by_size_and_spares_open_logs(tmp_path):
    out = tmp_path / "out"
    day = 86400
    ancient = _file(out / "2020_01_01_00_00.out" / "log_tcp_complete", 64, 30 * day)
    older = _file(out / "2024_01_01_00_00.out" / "log a", 600, 3 * 3600)
    old = _file(out / "2024_01_01_00_00.out" / "log b", 600, 2 * 3600)
    recent = _file(out / "2024_01_01_01_00.out" / "log c", 600, 3600)
    current = _file(out / "2024_01_01_02_00.out" / "log_tcp_complete", 1200, 10)
    result = subprocess.run([str(PRUNE), "--max-age-days", "7", "--max-size-mb", "2",
                             str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not ancient.exists() and not older.exists() and not old.exists()
    assert recent.exists() and current.exists()  # 1.8 MB left: within 2 MB
    assert f"removed {older}" in result.stdout
    # Over the limit with only an open log left: it stays, and the script says so.
    result = subprocess.run([str(PRUNE), "--max-size-mb", "1", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and current.exists() and not recent.exists()
    assert "still uses" in result.stderr


def test_prune_rejects_bad_arguments_and_ignores_a_missing_directory(tmp_path):
    assert subprocess.run([str(PRUNE), "--max-size-mb", "x", str(tmp_path)],
                          capture_output=True).returncode == 2
    assert subprocess.run([str(PRUNE)], capture_output=True).returncode == 2
    assert subprocess.run([str(PRUNE), str(tmp_path / "nothing")]).returncode == 0


# --- fast checks of the cross-build helpers --------------------------------------------------


def test_dependency_fields_keep_first_alternatives_without_versions_or_arch():
    from builds.cross import _first_alternatives, is_runtime_library

    field = "libc6 (>= 2.34), libdbus-1-3 (>= 1.9.14) | libelogind0, libfoo:any, "
    assert _first_alternatives(field) == ["libc6", "libdbus-1-3", "libfoo"]
    assert is_runtime_library("libpcap0.8") and is_runtime_library("libstdc++6")
    assert not any(map(is_runtime_library, ["libc6-dev", "libc-dev-bin", "adduser", "dpkg"]))


def test_deb_names_are_what_apt_get_download_writes():
    from builds.cross import Package

    package = Package("libcap2", "1:2.66-4+b1", "mipsel", "pool/main/libc/libcap2_2.66.deb",
                      "0" * 64)
    assert package.deb_name == "libcap2_1%3a2.66-4+b1_mipsel.deb"


def test_elf_check_reads_machine_class_and_byte_order(tmp_path):
    from builds import BuildError
    from builds.cross import check_elf, elf_info

    header = bytearray(64)
    header[:6] = b"\x7fELF\x01\x01"  # 32-bit, little-endian
    header[18:20] = (8).to_bytes(2, "little")  # EM_MIPS
    binary = tmp_path / "tstat"
    binary.write_bytes(bytes(header))
    assert elf_info(binary) == {"class": 32, "byteorder": "little", "machine": 8}
    assert check_elf(binary, "mipsel")["machine"] == 8
    with pytest.raises(BuildError, match="not a arm64 binary"):
        check_elf(binary, "arm64")
    binary.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(BuildError, match="not an ELF"):
        elf_info(binary)


def test_staged_tree_tarball_is_reproducible(tmp_path):
    from builds.cross import pack_tree

    tree = tmp_path / "stage"
    (tree / "usr/local/bin").mkdir(parents=True)
    (tree / "usr/local/bin/tstat").write_bytes(b"\x7fELF")
    (tree / "usr/local/bin/tstat").chmod(0o755)
    pack_tree(tree, tmp_path / "a.tar.gz")
    os.utime(tree / "usr/local/bin/tstat", (1, 1))
    pack_tree(tree, tmp_path / "b.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    listing = subprocess.run(["tar", "tzvf", tmp_path / "a.tar.gz"], capture_output=True,
                             text=True, check=True).stdout
    assert "-rwxr-xr-x root/root" in listing and "./usr/local/bin/tstat" in listing


def test_cross_build_refuses_a_missing_toolchain_with_the_packages_to_install(monkeypatch):
    from builds import BuildError
    from builds.cross import check_toolchain

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BuildError, match="apt-get install gcc-mipsel-linux-gnu"):
        check_toolchain("mipsel-linux-gnu", "mipsel")


def test_fake_source_tarball_is_reproducible_with_one_top_directory(tmp_path):
    from tests.support.upstream_fakes import source_tarball

    first = source_tarball("tstat", "tstat-92523dc", tmp_path / "a.tar.gz")
    second = source_tarball("tstat", "tstat-92523dc", tmp_path / "b.tar.gz")
    assert first.read_bytes() == second.read_bytes()
    names = subprocess.run(["tar", "tzf", first], capture_output=True, text=True,
                           check=True).stdout.split()
    assert names[0] == "tstat-92523dc/" and "tstat-92523dc/autogen.sh" in names
    assert all(n.startswith("tstat-92523dc/") for n in names)
