# SPDX-License-Identifier: Apache-2.0
"""The supervisor role, applied for real: into a Debian 12 image root through the chroot
connection (twice: the second run changes nothing; nothing is started) and into a live Debian
12 root over SSH, where the installed supervisor is started from its unit's command line and
must serve a PKI-authorized client over mutual TLS and refuse one without a certificate.

Also, without Ansible: the role's compatibility shim keeps ``ssl.wrap_socket``'s verification
semantics, and on Python 3.12 (Ubuntu 24.04's; here a local 3.12 if there is one) the SDK
installs offline from the artifact cache and its client reaches a supervisor over mutual TLS.
"""

from __future__ import annotations

import configparser
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pki import Deployment, PKIState, sync
from tests.conftest import REPO
from tests.support.debian_root import role_test_tarball
from tests.support.targets import (
    ChrootTarget,
    SshTarget,
    mounts_under,
    processes_rooted_in,
    run_playbook,
)

ROLE = REPO / "roles" / "supervisor"
SHIM = ROLE / "files" / "probeforge_mplane_shim.py"
VENV = "/opt/mplane-supervisor"
PASSPHRASE = b"supervisor-role-test"
CORE_REGISTRY = "http://ict-mplane.eu/registry/core"
# A stand-in for GLIMPSE's registry (it comes with its own role): an extra one to preload.
EXTRA_REGISTRY = {
    "registry-format": "mplane-0",
    "registry-uri": "https://www.measure-it.net/static/glimpse_registry.json",
    "registry-revision": 0,
    "includes": [CORE_REGISTRY],
    "elements": [{"name": "glimpse.ping.type", "prim": "string", "desc": "UDP, TCP or ICMP"}],
}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="targets need root (mounts, namespaces)")

PLAYBOOK = """\
- name: The supervisor role
  hosts: supervisors
  gather_facts: false
  roles:
    - supervisor
"""


# -- helpers -----------------------------------------------------------------------------------


def build_pki(state_dir: Path, supervisor: str, address: str, networks: list[str]) -> PKIState:
    """A PKI as playbooks/pki.yml would make it: the supervisor host, an operator allowed to
    use ping-, and a guest with a valid certificate but no role."""
    hosts = [(supervisor, "supervisors", address), ("operator", "clients", address),
             ("guest", "guests", address)]
    state = PKIState(state_dir)
    sync(state, Deployment.from_request({
        "deployment": "supervisor-role-test", "domains": ["supervisor-test.internal"],
        "networks": networks,
        "group_profiles": {"supervisors": "supervisor", "clients": "client", "guests": "client"},
        "mplane_roles": {"operators": ["clients"], "supervisors": ["supervisors"]},
        "authorizations": {"ping-": ["operators"], "tstat-": ["operators"]},
        "hosts": [{"name": n, "groups": [g], "address": a} for n, g, a in hosts],
    }), PASSPHRASE)
    return state


def write_inventory(workdir: Path, target: ChrootTarget | SshTarget,
                    **variables: object) -> Path:
    """A throw-away inventory beside the PKI state (<workdir>/.state/pki), the target in the
    supervisors group."""
    path = workdir / "inventory.yml"
    path.write_text(json.dumps({"all": {
        "vars": variables,
        "children": {"supervisors": {"hosts": {target.name: target.ansible_hostvars()}}},
    }}, indent=2) + "\n")
    return path


def assert_left_nothing(workdir: Path, target: ChrootTarget | SshTarget) -> None:
    """After teardown: no mount or process under the workdir, and the SSH target's network
    namespace and veth are gone (tests.support.targets.no_leaks compares all veths of the
    machine, which other test runs create meanwhile)."""
    assert mounts_under(workdir.resolve()) == []
    assert processes_rooted_in(workdir.resolve()) == []
    if isinstance(target, SshTarget):
        assert not Path(f"/run/netns/{target.netns}").exists()
        assert not Path(f"/sys/class/net/{target.veth_host}").exists()
        assert not target.client_processes()


def apply(workdir: Path, inventory: Path) -> tuple[float, object]:
    playbook = workdir / "supervisor.yml"
    playbook.write_text(PLAYBOOK)
    started = time.monotonic()
    # Pipelining for the chroot connection too (ansible.cfg sets it for SSH only): half the time.
    result = run_playbook(playbook, inventory, env={"ANSIBLE_PIPELINING": "1"})
    assert result.returncode == 0 and result.failed() == 0, \
        result.output[-8000:] + result.stderr[-3000:]
    return time.monotonic() - started, result


def read_ini(text: str) -> configparser.ConfigParser:
    # As mpsup reads it (keys keep their case, interpolation on).
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


@pytest.fixture(scope="module")
def artifact_cache() -> Path:
    """The supervisor's pinned files in the artifact cache (fetched from PyPI on first use)."""
    done = subprocess.run([sys.executable, "-m", "artifacts", "fetch", "--group", "supervisor"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    paths = subprocess.run([sys.executable, "-m", "artifacts", "path", "--group", "supervisor"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return Path(paths[0]).parent


@pytest.fixture(scope="module")
def tarball() -> Path:
    return role_test_tarball()


@pytest.fixture(scope="module")
def tarball_with_venv() -> Path:
    """The live host already has python3-venv: the role must then need no apt mirror."""
    return role_test_tarball(["python3-venv"])


@pytest.fixture
def extra_registry(tmp_path: Path) -> Path:
    path = tmp_path / "glimpse-registry.json"
    path.write_text(json.dumps(EXTRA_REGISTRY, indent=2) + "\n")
    return path


# -- image build: chroot, twice, nothing started -----------------------------------------------


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_role_in_an_image_root(tarball, artifact_cache, extra_registry, tmp_path, capsys):
    with ChrootTarget(tarball, tmp_path, name="sup-image") as target:
        # The image's address is what clients will use; a documentation address here.
        state = build_pki(tmp_path / ".state" / "pki", target.name, "192.0.2.10",
                          ["192.0.2.0/24"])
        inventory = write_inventory(tmp_path, target, mplane_supervisor_address="192.0.2.10",
                                    mplane_tls=True, supervisor_service_state="",
                                    supervisor_extra_registries=[str(extra_registry)])
        first_time, first = apply(tmp_path, inventory)
        assert first.changed(target.name) > 10, first.stats
        second_time, second = apply(tmp_path, inventory)
        assert second.changed(target.name) == 0, second.output[-8000:]

        host = target.testinfra_host()
        # The venv imports the SDK, with the shim loaded at start-up; pip found nothing online.
        check = host.run(f"{VENV}/bin/python -c 'import sys, ssl, html.parser, mplane.supervisor,"
                         " mplane.client, mplane.tls; html.parser.HTMLParser(strict=False);"
                         " print(sys.version_info[:2], \"probeforge_mplane_shim\" in sys.modules,"
                         " ssl.wrap_socket is not None)'")
        assert check.rc == 0, check.stderr
        assert check.stdout.split(")", 1)[1].split() == ["True", "True"]
        site = f"{VENV}/lib/python3.11/site-packages"
        assert host.file(f"{site}/probeforge_mplane_shim.py").content_string == SHIM.read_text()
        assert host.file(f"{site}/probeforge_mplane_shim.pth").content_string == \
            "import probeforge_mplane_shim\n"
        freeze = host.run(f"{VENV}/bin/python -m pip freeze --isolated").stdout.split()
        assert {"mplane-sdk==0.9.0", "tornado==6.6.1", "urllib3==2.8.0", "PyYAML==6.0.3",
                "nose==1.3.7"} <= set(freeze), freeze
        wheels = sorted(host.file("/var/cache/probeforge/mplane-supervisor").listdir())
        assert not [w for w in wheels if "-cp312-" in w], wheels  # only this Python's wheels
        assert host.package("python3-venv").is_installed

        # supervisor.conf: the inventory's ports and address, TLS files, the PKI's tables.
        conf_text = host.file("/etc/mplane/supervisor.conf").content_string
        conf = read_ini(conf_text)
        assert dict(conf["component"]) | {"registry_preload": "…"} == {
            "workflow": "client-initiated", "listen-port": "8888",
            "listen-cap-link": "https://192.0.2.10:8888/", "registry_uri": CORE_REGISTRY,
            "registry_preload": "…"}
        assert conf["component"]["registry_preload"].split() == [
            "/etc/mplane/registries/probeforge.json",
            "/etc/mplane/registries/glimpse-registry.json"]
        assert dict(conf["client"]) == {
            "workflow": "component-initiated", "listen-port": "8889",
            "registration-path": "register/capability",
            "specification-path": "show/specification", "result-path": "register/result",
            "listen-spec-link": "https://192.0.2.10:8889/"}
        assert dict(conf["TLS"]) == {"ca-chain": "/etc/mplane/certs/supervisor-chain.pem",
                                     "cert": "/etc/mplane/certs/supervisor.crt",
                                     "key": "/etc/mplane/certs/supervisor.key"}
        assert state.authz_path.read_text().strip() in conf_text  # verbatim
        assert dict(conf["Roles"]) == {"org.mplane.Clients.operator": "operators",
                                       "org.mplane.Supervisors.sup-image": "supervisors"}
        assert dict(conf["Authorizations"]) == {"ping-": "operators", "tstat-": "operators"}

        # The host's identity, the key private, the certificate in the RI's form.
        bundle = state.hosts_dir / target.name
        key = host.file("/etc/mplane/certs/supervisor.key")
        assert (key.mode, key.user, key.group) == (0o600, "root", "root")
        assert key.content_string == (bundle / "key.pem").read_text()
        assert host.file("/etc/mplane/certs").mode == 0o700
        cert = host.file("/etc/mplane/certs/supervisor.crt").content_string
        assert cert == (bundle / "cert-mplane.pem").read_text() and "Subject:" in cert
        assert host.file("/etc/mplane/certs/supervisor-chain.pem").content_string == \
            (bundle / "chain.pem").read_text()
        registry = json.loads(host.file("/etc/mplane/registries/probeforge.json").content_string)
        assert registry["registry-uri"] == "urn:probeforge:registry:measurements"
        assert json.loads(host.file("/etc/mplane/registries/glimpse-registry.json")
                          .content_string) == EXTRA_REGISTRY

        # The operators' client: the host's identity by default, same registries.
        client = read_ini(host.file("/etc/mplane/client.conf").content_string)
        assert dict(client["TLS"]) == dict(conf["TLS"])
        assert client["client"]["capability-url"] == "https://192.0.2.10:8888/capability"
        assert client["client"]["registry_preload"] == conf["component"]["registry_preload"]
        wrapper = host.file("/usr/local/bin/mplane-client")
        assert wrapper.mode == 0o755 and f"{VENV}/bin/mpcli" in wrapper.content_string

        # Enabled the offline way, never started.
        unit = "mplane-supervisor.service"
        assert host.file(f"/etc/systemd/system/multi-user.target.wants/{unit}").is_symlink
        assert host.run(f"systemctl is-enabled {unit}").stdout.strip() == "enabled"
        unit_text = host.file(f"/etc/systemd/system/{unit}").content_string
        assert f"ExecStart={VENV}/bin/python {VENV}/bin/mpsup --config " \
               "/etc/mplane/supervisor.conf" in unit_text
        assert "Restart=on-failure" in unit_text
        assert "SocketBindAllow=tcp:8888" in unit_text and "SocketBindAllow=tcp:8889" in unit_text
        verify = host.run(f"systemd-analyze verify --man=no /etc/systemd/system/{unit}")
        assert verify.rc == 0 and unit not in verify.stderr, verify.stderr
        assert processes_rooted_in(target.root) == []
    assert_left_nothing(tmp_path, target)
    with capsys.disabled():
        print(f"\nsupervisor role in a chroot: first run {first_time:.1f} s, "
              f"second {second_time:.1f} s")


# -- live host over SSH: the installed supervisor serves mutual TLS --------------------------


def _tls_get(address: str, port: int, path: str, context: ssl.SSLContext) -> int:
    connection = http.client.HTTPSConnection(address, port, context=context, timeout=15)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def _client_context(chain: Path, bundle: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(chain))
    if bundle is not None:
        context.load_cert_chain(bundle / "cert.pem", bundle / "key.pem")
    return context


def _wait_listening(address: str, ports: list[int], log: Callable[[], str],
                    timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        for port in list(pending):
            try:
                with socket.create_connection((address, port), timeout=1):
                    pending.remove(port)
            except OSError:
                pass
        if pending:
            assert time.monotonic() < deadline, f"not listening on {pending}:\n{log()}"
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.ansible
@needs_root
def test_role_on_a_live_host_serves_mutual_tls(tarball_with_venv, artifact_cache,
                                                extra_registry, tmp_path, capsys):
    # No apt proxy: the target has no way out, so nothing may be fetched while applying.
    with SshTarget(tarball_with_venv, tmp_path, name="sup-live") as target:
        state = build_pki(tmp_path / ".state" / "pki", target.name, target.host,
                          ["10.254.0.0/16"])
        client_port, component_port = 18888, 18889
        inventory = write_inventory(
            tmp_path, target, mplane_supervisor_address=target.host,
            mplane_supervisor_client_port=client_port,
            mplane_supervisor_component_port=component_port,
            # No systemd runs here: enable only, start by hand below.
            supervisor_service_state="",
            supervisor_client_bundle_dir=str(state.hosts_dir / "operator"),
            supervisor_extra_registries=[str(extra_registry)])
        run_time, _ = apply(tmp_path, inventory)

        host = target.testinfra_host()
        assert not host.socket(f"tcp://{client_port}").is_listening  # the role started nothing
        # Started as the unit would start it, detached from the SSH session.
        unit = host.file("/etc/systemd/system/mplane-supervisor.service").content_string
        exec_start = next(line.split("=", 1)[1] for line in unit.splitlines()
                          if line.startswith("ExecStart="))
        log = "/var/log/mplane-supervisor.log"
        target.run("sh", "-c", f"cd / && PYTHONUNBUFFERED=1 setsid -f {exec_start} "
                               f">{log} 2>&1 </dev/null")

        def mpsup_log() -> str:
            return host.file(log).content_string if host.file(log).exists else "(no log)"

        _wait_listening(target.host, [client_port, component_port], mpsup_log)
        assert host.socket(f"tcp://{client_port}").is_listening
        assert host.socket(f"tcp://{component_port}").is_listening

        chain = state.hosts_dir / target.name / "chain.pem"
        operator = _client_context(chain, state.hosts_dir / "operator")
        # Verified the supervisor's certificate (its SAN is the target's address) and was served.
        assert _tls_get(target.host, client_port, "/capability", operator) == 200
        # The component side takes the same identities; a GET there is simply not a route.
        assert _tls_get(target.host, component_port, "/", operator) in (404, 405)
        for port in (client_port, component_port):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                _tls_get(target.host, port, "/capability", _client_context(chain, None))

        # The operators' client on the host: mutual TLS with the operator's identity, both
        # registries preloaded, capabilities fetched on start ("ok"), ^D ends it.
        session = target.run("sh", "-c", "printf 'listcap\\n' | mplane-client")
        assert "ok" in session.split() and "Ciao!" in session, session
        text = mpsup_log()
        assert "Traceback" not in text, text
        assert host.process.filter(comm="python")  # still running
    assert_left_nothing(tmp_path, target)
    with capsys.disabled():
        print(f"\nsupervisor role over SSH: {run_time:.1f} s")


# -- the shim, without Ansible -----------------------------------------------------------------

WRAP_SOCKET_CHECK = r"""
import json, socket, ssl, sys, threading
sys.path.insert(0, sys.argv[1])
had_wrap_socket = hasattr(ssl, "wrap_socket")
import probeforge_mplane_shim as shim
server_cert, server_key, chain, other_chain = sys.argv[2:6]

server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_context.load_cert_chain(server_cert, server_key)
listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]

def serve():
    while True:
        conn, _ = listener.accept()
        try:
            with server_context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"x")
        except (ssl.SSLError, OSError):
            pass

threading.Thread(target=serve, daemon=True).start()

def connect(**kwargs):
    # As mplane.tls does: wrap an unconnected socket, then connect (no server_hostname).
    try:
        tls = ssl.wrap_socket(socket.socket(), **kwargs)
        tls.connect(("127.0.0.1", port))
        peer = tls.getpeercert()
        tls.close()
        return ".".join(v for rdn in peer.get("subject", ()) for _, v in rdn) or "unverified"
    except ssl.SSLCertVerificationError as exc:
        return "refused: " + exc.verify_message

print(json.dumps({
    "python": "%d.%d" % sys.version_info[:2],
    "had_wrap_socket": had_wrap_socket,
    "is_shim": ssl.wrap_socket is shim.wrap_socket,
    "verified": connect(cert_reqs=ssl.CERT_REQUIRED, ca_certs=chain),
    "other_ca": connect(cert_reqs=ssl.CERT_REQUIRED, ca_certs=other_chain),
    "no_verification": connect(cert_reqs=ssl.CERT_NONE),
    "shim_verified": (lambda: (setattr(ssl, "wrap_socket", shim.wrap_socket),
                               connect(cert_reqs=ssl.CERT_REQUIRED, ca_certs=chain))[1])(),
    "shim_other_ca": connect(cert_reqs=ssl.CERT_REQUIRED, ca_certs=other_chain),
}))
"""


def _python312() -> str | None:
    """A Python 3.12 (Ubuntu 24.04's version): $PROBEFORGE_PYTHON312, on PATH, or pyenv's."""
    candidates = [os.environ.get("PROBEFORGE_PYTHON312", ""), "python3.12", "/usr/bin/python3.12",
                  *sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))]
    for candidate in candidates:
        found = shutil.which(candidate) if candidate else None
        if found and subprocess.run([found, "-c", "import sys; assert sys.version_info[:2] == "
                                     "(3, 12)"], capture_output=True).returncode == 0:
            return found
    return None


@pytest.fixture(scope="module")
def two_pkis(tmp_path_factory) -> tuple[PKIState, PKIState]:
    work = tmp_path_factory.mktemp("pkis")
    return (build_pki(work / "a", "sup", "127.0.0.1", ["127.0.0.0/8"]),
            build_pki(work / "b", "sup", "127.0.0.1", ["127.0.0.0/8"]))


@pytest.mark.parametrize("python", ["current", "3.12"])
def test_shim_wrap_socket_keeps_verification(two_pkis, tmp_path, python):
    interpreter = sys.executable if python == "current" else _python312()
    if interpreter is None:
        pytest.skip("no Python 3.12 here (Ubuntu 24.04's Python)")
    mine, other = two_pkis
    bundle = mine.hosts_dir / "sup"
    done = subprocess.run(
        [interpreter, "-I", "-B", "-c", WRAP_SOCKET_CHECK, str(SHIM.parent),
         str(bundle / "cert.pem"), str(bundle / "key.pem"), str(bundle / "chain.pem"),
         str(other.hosts_dir / "sup" / "chain.pem")],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    identity = "org.mplane.Supervisors.sup"
    # Where Python still has ssl.wrap_socket (3.11) the shim leaves it alone; on 3.12 it is
    # the shim's. Either way: the chain is verified, another CA is refused, CERT_NONE is not
    # verified, host names are not checked (the RI gives none).
    assert result["is_shim"] is (not result["had_wrap_socket"])
    for prefix in ("", "shim_"):
        assert result[f"{prefix}verified"] == identity
        assert result[f"{prefix}other_ca"].startswith("refused: unable to get local issuer")
    assert result["no_verification"] == "unverified"


@pytest.mark.slow
@pytest.mark.mplane_ri
def test_sdk_installs_offline_and_talks_tls_on_python_312(artifact_cache, two_pkis, tmp_path):
    """What the role does on Ubuntu 24.04, as far as it can be done here: the same offline pip
    install from the cached files into a Python 3.12 venv, the shim, and the RI client
    (HttpInitiatorClient, which calls ssl.wrap_socket) against the RI supervisor over TLS."""
    import yaml

    from rig.mplane_ri import RISupervisor, TLSFiles, free_port, list_capabilities
    from tests.support.probe_daemon_proc import registry_file

    python = _python312()
    if python is None:
        pytest.skip("no Python 3.12 here (Ubuntu 24.04's Python)")
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--isolated",
                    "--no-index", "--use-pep517", "--disable-pip-version-check", "--no-input",
                    "--find-links", str(artifact_cache), *defaults["supervisor_pip_requirements"]],
                   check=True, capture_output=True, timeout=300)
    site = venv / "lib" / "python3.12" / "site-packages"
    shutil.copy(SHIM, site / SHIM.name)
    (site / "probeforge_mplane_shim.pth").write_text("import probeforge_mplane_shim\n")

    state, _ = two_pkis
    registry = registry_file(tmp_path)
    with RISupervisor(venv, tmp_path / "sup", component_port=free_port(),
                      client_port=free_port(),
                      tls=TLSFiles.from_pki_bundle(state.hosts_dir / "sup"),
                      authz_ini=state.authz_path.read_text(), registry_preload=registry) as sup:
        operator = TLSFiles.from_pki_bundle(state.hosts_dir / "operator")
        assert list_capabilities(venv, sup.client_url, tls=operator,
                                 registry_preload=registry) == []
