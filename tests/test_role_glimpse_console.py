# SPDX-License-Identifier: Apache-2.0
"""The glimpse_console role for real: native Qt build in a Debian root, mutual TLS over SSH,
and the role's GLIMPSE registry in the real mPlane SDK.

CI cannot reach upstream, so by default the role builds the stand-ins of
``tests/support/upstream_fakes/glimpse`` (glimpse_client's qmake layout and build interface, a
``glimpse-console`` taking the same options that makes one registration attempt over mutual
TLS and then idles; miniupnp and qtsystems stand-ins unpacked where the real submodules go),
packed under the pinned names with a manifest override. ``PROBEFORGE_REAL_UPSTREAM=1`` runs the
same tests on the real sources from the artifact cache (roles/glimpse_console/README.md).

* chroot: the role (Qt build dependencies from deb.debian.org with apt inside the root, .debs
  and package lists cached in ``.cache/glimpse-console-role-test`` between runs) converges,
  then changes nothing on a second run; testinfra checks the binary and its library, the build
  record, the credentials (key 0600) and the unit's command line.
* SSH: the role converges on a live target pointed at a TLS listener on the host's end of the
  veth, which presents the PKI's supervisor certificate and requires a client certificate;
  the console started there (as the unit's user, with the unit's command line: there is no
  systemd in these targets) connects with the host's certificate. A listener with a
  certificate from another CA is refused.
* registry: the mplane-sdk RI preloads ``files/glimpse-registry.json`` and parses GLIMPSE's
  capability and result statements with it.
"""

import json
import os
import shlex
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pki import Deployment, PKIState, sync
from rig.mplane_ri import default_cache_dir, ri_python, ri_venv
from tests.support.apt_cache import apt_cache_in, seed_apt_cache
from tests.support.debian_root import role_test_tarball
from tests.support.targets import ChrootTarget, PlaybookResult, SshTarget, run_playbook
from tests.support.upstream_fakes import (
    REAL_UPSTREAM_ENV,
    manifest_override,
    real_upstream,
    source_tarball,
)

REPO = Path(__file__).resolve().parents[1]
ROLE = REPO / "roles" / "glimpse_console"
REGISTRY = ROLE / "files" / "glimpse-registry.json"
APT_CACHE = REPO / ".cache" / "glimpse-console-role-test"
PASSPHRASE = b"glimpse-console-role-test"

# Artifact name -> stand-in project under tests/support/upstream_fakes.
ARTIFACTS = {
    "glimpse-source": "glimpse/glimpse_client",
    "glimpse-miniupnp": "glimpse/miniupnp",
    "glimpse-qtsystems": "glimpse/qtsystems",
}
BUILD_PACKAGES = ("build-essential", "patch", "pkg-config", "qt5-qmake", "qtbase5-dev",
                  "qtbase5-dev-tools", "iputils-ping")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="targets need root")

PLAYBOOK = """\
- name: Apply the glimpse_console role
  hosts: targets
  gather_facts: true
  roles:
    - role: glimpse_console
"""

REGISTRY_PLAYBOOK = """\
- name: Get the GLIMPSE registry's path only
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Export it
      ansible.builtin.include_role:
        name: glimpse_console
        tasks_from: registry
    - name: Show it
      ansible.builtin.debug:
        var: glimpse_console_registry_file
"""


# --- set-up helpers ----------------------------------------------------------------------------


def glimpse_env(workdir: Path) -> dict[str, str]:
    """Environment for ansible-playbook in which the three glimpse artifacts resolve to the
    stand-ins (or, with PROBEFORGE_REAL_UPSTREAM=1, to the real ones in the cache)."""
    from artifacts import ArtifactError, load_manifest, verified_path

    if real_upstream():
        try:
            paths = [verified_path(name) for name in ARTIFACTS]
        except ArtifactError as exc:
            pytest.skip(f"{REAL_UPSTREAM_ENV}=1 but the real glimpse sources are not usable: "
                        f"{exc}")
        return {"PROBEFORGE_ARTIFACT_CACHE": str(Path(paths[0]).parent),
                "PROBEFORGE_ARTIFACT_MANIFEST": str(load_manifest().path)}
    manifest = load_manifest()
    cache = workdir / "artifact-cache"
    tarballs = {}
    for name, project in ARTIFACTS.items():
        artifact = manifest.get(name)
        assert artifact.git is not None, f"{name} is pinned as a git archive"
        top = artifact.git.prefix.rstrip("/")
        tarballs[name] = source_tarball(project, top, cache / artifact.file)
    override = manifest_override(workdir / "manifest.yml", tarballs)
    return {"PROBEFORGE_ARTIFACT_CACHE": str(cache),
            "PROBEFORGE_ARTIFACT_MANIFEST": str(override)}


def make_pki(workdir: Path, host: str, host_address: str, supervisor_address: str) -> PKIState:
    """The deployment PKI where the role's default bundle_dir finds it: the inventory's
    ``.state/pki`` (inventories of targets are written to ``workdir``)."""
    request = {
        "deployment": "glimpse-test", "domains": ["glimpse-test.internal"],
        "networks": ["127.0.0.0/8", "10.254.0.0/16", "192.0.2.0/24"],
        "group_profiles": {"supervisors": "supervisor", "probes": "probe"},
        "hosts": [{"name": "supervisor", "groups": ["supervisors"],
                   "address": supervisor_address},
                  {"name": host, "groups": ["probes"], "address": host_address}],
    }
    state = PKIState(workdir / ".state" / "pki")
    sync(state, Deployment.from_request(request), PASSPHRASE)
    return state


def converge(workdir: Path, inventory: Path, env: dict[str, str], extra: dict[str, object],
             *, twice: bool = True) -> list[PlaybookResult]:
    """Run the role (twice: the second run must change nothing)."""
    book = workdir / "glimpse_console.yml"
    book.write_text(PLAYBOOK)
    variables = workdir / "vars.json"
    variables.write_text(json.dumps(extra))
    results = []
    for _ in range(2 if twice else 1):
        result = run_playbook(book, inventory, "-e", f"@{variables}", env=env, timeout=1800)
        assert result.returncode == 0, result.report()
        results.append(result)
    if twice:
        assert results[1].changed() == 0, results[1].report()
    return results


def exec_start(unit: str) -> list[str]:
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


# --- a supervisor stand-in: TLS listener that records who connected ----------------------------


@dataclass
class Connection:
    identity: str = ""  # the client certificate's subject RDN values joined by "." (mPlane)
    request_line: str = ""
    error: str = ""


def read_request(conn: ssl.SSLSocket) -> str:
    """Read a whole HTTP request (head and Content-Length body); return its request line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                   if line.lower().startswith("content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return lines[0]


@dataclass
class TLSListener:
    """Accepts TLS connections on ``address``, presenting ``cert``/``key`` and requiring a
    client certificate that chains to ``ca``; answers each request ``200 {}``."""

    address: str
    cert: Path
    key: Path
    ca: Path
    connections: list[Connection] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(self.cert, self.key)
        self.context.load_verify_locations(self.ca)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.create_server((self.address, 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "TLSListener":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            record = Connection()
            try:
                raw.settimeout(10)
                with self.context.wrap_socket(raw, server_side=True) as conn:
                    subject = conn.getpeercert()["subject"]
                    record.identity = ".".join(value for rdn in subject for _, value in rdn)
                    record.request_line = read_request(conn)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-mplane+json"
                                 b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            except (OSError, ssl.SSLError) as exc:
                record.error = f"{type(exc).__name__}: {exc}"
            finally:
                raw.close()
            self.connections.append(record)

    def wait(self, predicate, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(c) for c in list(self.connections)):
                return True
            time.sleep(0.2)
        return False


# --- chroot ------------------------------------------------------------------------------------

CHROOT_NAME = "glimpse-chroot"
CHROOT_VARS = {
    "mplane_supervisor_address": "192.0.2.10",
    "mplane_supervisor_component_port": 8889,
    "glimpse_console_service_state": "",
}


@pytest.fixture(scope="module")
def chroot_role(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The role applied twice to a fresh Debian 12 root; the root stays for the tests."""
    if os.geteuid() != 0:
        pytest.skip("targets need root")
    workdir = tmp_path_factory.mktemp("glimpse-chroot")
    env = glimpse_env(workdir)
    pki = make_pki(workdir, CHROOT_NAME, "192.0.2.20", "192.0.2.10")
    with ChrootTarget(role_test_tarball(), workdir, name=CHROOT_NAME) as target:
        began = time.monotonic()
        with apt_cache_in(APT_CACHE, target.root):
            first, second = converge(workdir, target.inventory_file(["targets", "probes"]),
                                     env, CHROOT_VARS)
        yield {"target": target, "first": first, "second": second, "env": env, "pki": pki,
               "seconds": time.monotonic() - began}


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_role_converges_and_a_second_run_changes_nothing(chroot_role):
    first, second = chroot_role["first"], chroot_role["second"]
    assert first.changed(CHROOT_NAME) > 0
    assert second.changed(CHROOT_NAME) == 0, second.report()
    built = [name for name, _, result in first.tasks()
             if name.endswith("libclient and the console are compiled") and result.get("changed")]
    assert built, first.report()
    # The second run decided from the build record alone.
    skipped = [result for name, _, result in second.tasks()
               if name.endswith("libclient and the console are compiled")]
    assert all(result.get("skipped") for result in skipped), second.report()


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_console_and_its_library_are_installed_and_run(chroot_role):
    target = chroot_role["target"]
    host = target.testinfra_host()
    binary = host.file("/usr/local/bin/glimpse-console")
    assert binary.is_file and binary.mode == 0o755 and binary.user == "root"
    # libglimpse is private to the console, found through its RUNPATH.
    assert host.file("/usr/local/lib/glimpse-console/libglimpse.so.2").is_symlink
    ldd = target.run("ldd", "/usr/local/bin/glimpse-console")
    assert "not found" not in ldd, ldd
    assert "/usr/local/lib/glimpse-console/libglimpse.so.2" in ldd, ldd
    usage = target.run("/usr/local/bin/glimpse-console", "--help")
    for option in ("--supervisor", "--ca-cert", "--client-cert", "--private-key"):
        assert option in usage
    for package in BUILD_PACKAGES:
        assert host.package(package).is_installed, package
    # The build tree is gone; tarballs and patches stay for the next comparison.
    assert not host.file("/usr/local/src/glimpse-console-build").exists
    patches = sorted(p.name for p in (ROLE / "files" / "patches").glob("*.patch"))
    assert sorted(host.file("/usr/local/src/glimpse-console-patches").listdir()) == patches


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_build_record_names_every_source_and_patch_with_its_sha256(chroot_role):
    from artifacts import load_manifest, sha256_file

    target, env = chroot_role["target"], chroot_role["env"]
    text = (target.root / "usr/local/share/glimpse-console/probeforge-build").read_text()
    record = dict(line.split("=", 1) for line in text.splitlines())
    manifest = load_manifest(env["PROBEFORGE_ARTIFACT_MANIFEST"])
    cache = Path(env["PROBEFORGE_ARTIFACT_CACHE"])
    for name in ARTIFACTS:
        file = manifest.get(name).file
        assert record[file] == sha256_file(cache / file)[0], name
    for patch in (ROLE / "files" / "patches").glob("*.patch"):
        assert record[patch.name] == sha256_file(patch)[0]
    assert "CONFIG+=no_breakpad" in record["qmake"]
    assert "QMAKE_RPATHDIR+=/usr/local/lib/glimpse-console" in record["qmake"]


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_credentials_come_from_the_pki_bundle_and_the_key_is_private(chroot_role):
    target, pki = chroot_role["target"], chroot_role["pki"]
    host = target.testinfra_host()
    bundle = pki.hosts_dir / CHROOT_NAME
    directory = host.file("/etc/glimpse-console")
    assert directory.mode == 0o750 and directory.user == "root" and directory.group == "glimpse"
    key = host.file("/etc/glimpse-console/key.pem")
    assert key.mode == 0o600 and key.user == "glimpse"
    assert key.content == (bundle / "key.pem").read_bytes()
    assert host.file("/etc/glimpse-console/cert.pem").content == (bundle / "cert.pem").read_bytes()
    ca = host.file("/etc/glimpse-console/ca.pem")
    assert ca.mode == 0o644 and ca.content == (bundle / "chain.pem").read_bytes()
    user = host.user("glimpse")
    assert user.home == "/var/lib/glimpse-console" and user.shell == "/usr/sbin/nologin"
    state = host.file("/var/lib/glimpse-console")
    assert state.is_directory and state.user == "glimpse" and state.mode == 0o750


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_unit_points_the_console_at_the_supervisors_component_side(chroot_role):
    target = chroot_role["target"]
    host = target.testinfra_host()
    unit = host.file("/etc/systemd/system/glimpse-console.service").content_string
    assert exec_start(unit) == [
        "/usr/local/bin/glimpse-console", "--supervisor", "https://192.0.2.10:8889",
        "--ca-cert", "/etc/glimpse-console/ca.pem",
        "--client-cert", "/etc/glimpse-console/cert.pem",
        "--private-key", "/etc/glimpse-console/key.pem"]
    assert "\nUser=glimpse\n" in unit and "\nEnvironment=HOME=/var/lib/glimpse-console\n" in unit
    link = host.file("/etc/systemd/system/multi-user.target.wants/glimpse-console.service")
    assert link.is_symlink
    verify = host.run("systemd-analyze verify --man=no /etc/systemd/system/glimpse-console.service")
    # Offline in a root without a running systemd, only unit syntax problems matter.
    assert "Unknown key" not in verify.stderr and "bad-setting" not in verify.stderr, \
        verify.stderr


# --- live over SSH: mutual TLS with the host's certificate -------------------------------------

SSH_NAME = "glimpse-ssh"


def console_command(unit: str, supervisor: str | None = None) -> str:
    """The unit's command line run as its user with its HOME (a shell command), optionally
    against another supervisor URL."""
    argv = exec_start(unit)
    if supervisor is not None:
        argv[argv.index("--supervisor") + 1] = supervisor
    return shlex.join(["setpriv", "--reuid=glimpse", "--regid=glimpse", "--init-groups",
                       "env", "HOME=/var/lib/glimpse-console", *argv])


def start_console(target: SshTarget, command: str, log: str) -> str:
    return target.run("sh", "-c", f"{command} >{log} 2>&1 </dev/null & echo $!").strip()


def stop_console(target: SshTarget, pid: str) -> None:
    target.run("sh", "-c", f"kill {pid} 2>/dev/null; true")


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_console_connects_to_the_supervisor_with_its_client_certificate(tmp_path):
    env = glimpse_env(tmp_path)
    with SshTarget(role_test_tarball(), tmp_path, name=SSH_NAME, apt_proxy=True) as target:
        seed_apt_cache(APT_CACHE, target.root)
        pki = make_pki(tmp_path, SSH_NAME, target.host, target.host_address)
        supervisor = pki.hosts_dir / "supervisor"
        with TLSListener(target.host_address, supervisor / "cert.pem", supervisor / "key.pem",
                         supervisor / "chain.pem") as listener:
            live_vars = {"mplane_supervisor_address": target.host_address,
                         "mplane_supervisor_component_port": listener.port,
                         "glimpse_console_service_state": ""}
            converge(tmp_path, target.inventory_file(["targets", "probes"]), env, live_vars,
                     twice=False)
            unit = target.run("cat", "/etc/systemd/system/glimpse-console.service")
            assert f"--supervisor https://{target.host_address}:{listener.port} " in unit
            pid = start_console(target, console_command(unit), "/tmp/glimpse.out")
            try:
                connected = listener.wait(lambda c: c.identity and c.request_line)
                log = target.run("cat", "/tmp/glimpse.out")
                assert connected, f"{listener.connections}\n{log}"
            finally:
                stop_console(target, pid)
        good = [c for c in listener.connections if c.identity]
        # The identity the supervisor authorizes: the host's certificate subject.
        assert {c.identity for c in good} == {f"org.mplane.Probes.{SSH_NAME}"}, \
            listener.connections
        assert any(c.request_line.startswith("POST /register/capability ") for c in good)
        assert "Capabilities sent" in log, log

        # Negative control: a "supervisor" whose certificate another CA issued is refused.
        other = make_pki(tmp_path / "other", SSH_NAME, target.host, target.host_address)
        impostor = other.hosts_dir / "supervisor"
        with TLSListener(target.host_address, impostor / "cert.pem", impostor / "key.pem",
                         pki.hosts_dir / "supervisor" / "chain.pem") as listener:
            url = f"https://{target.host_address}:{listener.port}"
            pid = start_console(target, console_command(unit, url), "/tmp/impostor.out")
            try:
                assert listener.wait(lambda c: True, timeout=30), "no connection attempt"
                time.sleep(2)
                log = target.run("cat", "/tmp/impostor.out")
            finally:
                stop_console(target, pid)
        assert not [c for c in listener.connections if c.identity], listener.connections
        assert "Capabilities sent" not in log, log
        assert "SSL" in log or "ssl" in log, log


# --- the registry through the real mPlane SDK --------------------------------------------------

GLIMPSE_REGISTRY_URI = "https://www.measure-it.net/static/glimpse_registry.json"

# What the console registers (FIELD-NOTES, "Capabilities the bundled components expose", and
# the *_definition.cpp files of glimpse_client e5276fe): label -> (parameters, results).
CAPABILITIES = {
    "glimpse-ping": (
        ["destination.port", "destination.url", "glimpse.ping.interval.ms",
         "glimpse.ping.payload", "glimpse.ping.timeout.ms", "glimpse.ping.type", "packets.ip",
         "source.port", "ttl"],
        ["rtt.ms.min", "rtt.ms.max", "rtt.ms.avg", "rtt.ms.stdev", "packets.ip.sent",
         "packets.ip.received"]),
    "glimpse-traceroute": (
        ["destination.port", "destination.url", "glimpse.ping.interval.ms",
         "glimpse.ping.payload", "glimpse.ping.timeout.ms", "packets.ip", "source.port"],
        ["glimpse.traceroute.start-time", "glimpse.traceroute.hop-ip", "ttl", "rtt.ms.min",
         "rtt.ms.max", "rtt.ms.avg", "rtt.ms.stdev", "packets.ip"]),
    "glimpse-httpdownload": (
        ["destination.url", "glimpse.http.thread.count"],
        ["glimpse.http.bandwidth.imputed.bps.avg", "glimpse.http.thread.count", "untainted"]),
    "glimpse-dnslookup": (
        # glimpse.dns.server: in the code since before the tag, not in the field notes.
        ["destination.url", "glimpse.dns.server"],
        ["glimpse.dns.record-name", "ttl", "glimpse.dns.record-value",
         "glimpse.dns.record-type"]),
    "glimpse-reversednslookup": (
        ["destination.ip4"],
        ["glimpse.dns.record-name", "glimpse.dns.record-value"]),
}

_RI_CHECK = """\
import json
import sys

import mplane.model

request = json.load(sys.stdin)
mplane.model.preload_registry(request["registry"])
mplane.model.initialize_registry()
core = mplane.model.Registry()
glimpse = mplane.model.registry_for_uri(request["uri"])
answer = {"uri": glimpse.uri(), "capabilities": {}, "results": {},
          "redefined_core": sorted(name for name in request["own"] if core[name] is not None),
          "primitives": {name: mplane.model.element(name).primitive_name()
                         for name in request["own"]}}
for label, statement in request["capabilities"].items():
    cap = mplane.model.parse_json(json.dumps(statement))
    answer["capabilities"][label] = {
        "label": cap.get_label(), "parameters": sorted(cap.parameter_names()),
        "results": list(cap.result_column_names()), "when": str(cap.when())}
for label, statement in request["results"].items():
    res = mplane.model.parse_json(json.dumps(statement))
    answer["results"][label] = json.loads(mplane.model.unparse_json(res))["resultvalues"]
json.dump(answer, sys.stdout)
"""


def glimpse_capability(label: str, when: str = "now") -> dict[str, object]:
    """A capability statement as the console sends it (version 0, every parameter "*")."""
    parameters, results = CAPABILITIES[label]
    return {"capability": "measure", "label": label, "version": 0, "when": when,
            "registry": GLIMPSE_REGISTRY_URI, "parameters": dict.fromkeys(parameters, "*"),
            "results": results}


def glimpse_result(label: str, parameters: dict[str, str], rows: list[list[object]],
                   ) -> dict[str, object]:
    return {"result": "measure", "label": label, "version": 0, "registry": GLIMPSE_REGISTRY_URI,
            "token": "0123456789abcdef", "when": "2026-11-22 10:00:00",
            "parameters": parameters, "results": CAPABILITIES[label][1], "resultvalues": rows}


@pytest.mark.mplane_ri
def test_registry_preloads_in_the_real_ri_and_parses_glimpse_statements():
    registry = json.loads(REGISTRY.read_text())
    assert registry["registry-format"] == "mplane-0"
    assert registry["registry-uri"] == GLIMPSE_REGISTRY_URI
    assert registry["includes"] == ["http://ict-mplane.eu/registry/core"]
    own = [element["name"] for element in registry["elements"]]
    assert len(own) == len(set(own))
    used = {name for parameters, results in CAPABILITIES.values()
            for name in parameters + results}
    # Every glimpse.* element the capabilities use is defined, and nothing else glimpse.*.
    assert {n for n in own if n.startswith("glimpse.")} == {n for n in used
                                                           if n.startswith("glimpse.")}

    ping_params = {"destination.url": "www.example.org", "glimpse.ping.type": "Udp",
                   "packets.ip": "3", "glimpse.ping.timeout.ms": "1000",
                   "glimpse.ping.interval.ms": "200", "ttl": "64", "destination.port": "33434",
                   "source.port": "33434", "glimpse.ping.payload": "74"}
    trace_params = {k: v for k, v in ping_params.items() if k not in ("glimpse.ping.type", "ttl")}
    request = {
        "registry": str(REGISTRY), "uri": GLIMPSE_REGISTRY_URI, "own": own,
        "capabilities": {label: glimpse_capability(label) for label in CAPABILITIES},
        "results": {
            # Values as the console computes them (float RTTs, Qt's ISO time with a blank).
            "glimpse-ping": glimpse_result("glimpse-ping", ping_params,
                                           [[0.051, 0.102, 0.0713, 0.02, 3, 3]]),
            "glimpse-traceroute": glimpse_result(
                "glimpse-traceroute", trace_params,
                [["2026-11-22 10:00:00", "192.0.2.1", 1, 0.4, 0.9, 0.6, 0.2, 3]]),
            "glimpse-httpdownload": glimpse_result(
                "glimpse-httpdownload",
                {"destination.url": "http://www.example.org/", "glimpse.http.thread.count": "4"},
                [[93418234.5, 4, True]]),
        },
    }
    request["capabilities"]["repeated"] = {**glimpse_capability("glimpse-ping"),
                                           "label": "repeated", "when": "now + 60s / 10s"}
    done = subprocess.run([str(ri_python(ri_venv(default_cache_dir()))), "-c", _RI_CHECK],
                          input=json.dumps(request), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)

    assert answer["uri"] == GLIMPSE_REGISTRY_URI
    # The GLIMPSE registry extends the core one without changing any of its elements.
    assert answer["redefined_core"] == []
    for label, (parameters, results) in CAPABILITIES.items():
        parsed = answer["capabilities"][label]
        assert parsed["label"] == label
        assert parsed["parameters"] == sorted(parameters)
        assert parsed["results"] == results
    assert answer["capabilities"]["repeated"]["when"] == "now + 1m / 10s"
    primitives = answer["primitives"]
    assert primitives["glimpse.ping.type"] == "string"
    assert primitives["glimpse.traceroute.start-time"] == "time"
    assert primitives["glimpse.traceroute.hop-ip"] == "address"
    assert primitives["rtt.ms.avg"] == primitives["rtt.ms.min"] == "real"
    assert primitives["untainted"] == "boolean"
    assert primitives["glimpse.http.bandwidth.imputed.bps.avg"] == "real"
    assert {primitives[n] for n in ("ttl", "packets.ip.sent", "packets.ip.received",
                                    "glimpse.ping.interval.ms", "glimpse.ping.timeout.ms",
                                    "glimpse.ping.payload", "glimpse.http.thread.count")} \
        == {"natural"}
    assert answer["results"]["glimpse-ping"] == [["0.051", "0.102", "0.0713", "0.02", "3", "3"]]
    assert answer["results"]["glimpse-traceroute"][0][:2] == ["2026-11-22 10:00:00.000000",
                                                             "192.0.2.1"]
    assert answer["results"]["glimpse-httpdownload"] == [["93418234.5", "4", "True"]]


@pytest.mark.ansible
def test_registry_entry_point_exports_the_path_without_building(tmp_path):
    inventory = tmp_path / "localhost.json"
    inventory.write_text(json.dumps({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": "auto_silent"}}}}))
    book = tmp_path / "registry.yml"
    book.write_text(REGISTRY_PLAYBOOK)
    result = run_playbook(book, inventory)
    assert result.returncode == 0, result.report()
    shown = [res for name, _, res in result.tasks() if name == "Show it"]
    assert Path(shown[0]["glimpse_console_registry_file"]) == REGISTRY
    assert result.changed() == 0
    assert stat.S_ISREG(REGISTRY.stat().st_mode)
