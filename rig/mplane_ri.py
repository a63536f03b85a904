# SPDX-License-Identifier: Apache-2.0
"""Drive the mPlane reference implementation (``mplane-sdk`` 0.9.0).

The rig runs the RI client for the operator's measurement (and the RI supervisor on the host
when the inventory's supervisor is not an appliance); the tests use the same code as their
yardstick for interoperability: a supervisor (``mpsup``), the RI component runtime (``mpcom``)
with its ping module, and the RI client library. They run from a private Python 3.11 venv in
subprocesses, so the calling process never imports ``mplane`` and the RI's old dependencies
never meet ours. The venv is installed offline from the artifact cache (group ``supervisor``),
fetched first when something is missing.

Port naming follows the harness user, not the RI: a supervisor's
``component_port`` is where components register (the RI calls that side its
``[client]``), its ``client_port`` is where clients list capabilities and post
specifications (the RI's ``[component]`` side).

Certificates and authorizations come from probeforge's PKI (``pki``): a host
bundle's ``chain.pem``, ``cert-mplane.pem`` (the RI form) and ``key.pem`` make
a :class:`TLSFiles`, and the PKI's ``authz.ini`` is a supervisor's
``authz_ini``. The harness renders ``roles``/``authorizations`` tables with
the PKI's renderer too, so there is one way of writing them in the project.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from artifacts import (
    ArtifactError,
    Cache,
    fetch,
    load_manifest,
    resolve_cache_dir,
    resolve_mirrors,
)
from pki.authz import render_authz

RI_REQUIREMENTS: tuple[str, ...] = (
    "mplane-sdk==0.9.0",
    "tornado==6.6.1",
    "urllib3==2.8.0",
    # Only imported by the RI; its YAML parser breaks on PyYAML 6, but the RI
    # speaks JSON on the wire, and PyYAML 5.x has no Python 3.11 wheels.
    "PyYAML==6.0.3",
    # A declared install requirement of mplane-sdk, used only by its self-tests.
    "nose==1.3.7",
)

# The RI's own default paths (mplane/client.py), also what existing components use.
REGISTRATION_PATH = "register/capability"
SPECIFICATION_PATH = "show/specification"
RESULT_PATH = "register/result"
# Statements name this registry; the RI maps it to the registry.json it ships,
# so no network access is needed.
CORE_REGISTRY = "http://ict-mplane.eu/registry/core"

RI_PING_LABELS: tuple[str, ...] = ("ping-average-ip4", "ping-detail-ip4")

# Only appears in the comment heading authorization tables rendered here.
HARNESS_AUTHZ_NAME = "mplane-ri-test-harness"

# The compatibility shim for mplane-sdk on current Python (HTMLParser(strict=), ssl.wrap_socket,
# several registry_preload files) is the one the supervisor role installs on appliances: one
# copy, in the role. It is loaded through a .pth file at interpreter start-up, as there.
SHIM_MODULE = "probeforge_mplane_shim"
SHIM_FILE = Path(__file__).resolve().parents[1] / "roles/supervisor/files" / f"{SHIM_MODULE}.py"

# Only the harness runs the RI ping component (mpcom), so only the harness needs this fix;
# appliances run no RI component. It uses the role shim's after_import hook.
_RI_PING_SHIM_MODULE = "probeforge_ri_ping_shim"
_RI_PING_SHIM_SOURCE = '''\
"""probeforge test harness: the RI ping component with Linux ping."""
import probeforge_mplane_shim


def _linux_ping_source_option(module):
    # mplane.components.ping passes the BSD "-S <source address>"; Linux iputils reads -S
    # as a socket buffer size and exits, so every measurement would fail. Its "-I" takes a
    # source address. The module reads the option at call time.
    module._pingopt_source = "-I"


probeforge_mplane_shim.after_import("mplane.components.ping", _linux_ping_source_option)
'''


def _shim_files() -> dict[str, str]:
    """Files written into the RI venv's site-packages, by name."""
    return {
        f"{SHIM_MODULE}.py": SHIM_FILE.read_text(),
        f"{SHIM_MODULE}.pth": f"import {SHIM_MODULE}\n",
        f"{_RI_PING_SHIM_MODULE}.py": _RI_PING_SHIM_SOURCE,
        f"{_RI_PING_SHIM_MODULE}.pth": f"import {_RI_PING_SHIM_MODULE}\n",
    }


# Runs inside the RI venv (python -c), request as JSON on stdin, answer as JSON
# on stdout. It uses the RI's own HttpInitiatorClient so that what is tested
# is what mpcli does, not our reading of the protocol.
_CLIENT_DRIVER = """\
import json
import sys
import time

request = json.load(sys.stdin)
answer = sys.stdout
# The RI prints progress to stdout; keep stdout for the one JSON answer.
sys.stdout = sys.stderr

import mplane.client
import mplane.model
import mplane.tls

if request.get("registry_preload"):
    # Registries other than the core one are preloaded from files: the RI would
    # otherwise try to download them from their URI.
    mplane.model.preload_registry(request["registry_preload"])
mplane.model.initialize_registry(request["registry"])
config = {"client": {}}
if request["tls"] is not None:
    config["TLS"] = request["tls"]
client = mplane.client.HttpInitiatorClient(config, mplane.tls.TlsState(config))
base_url = request["url"].rstrip("/")
# retrieve_capabilities() would make the index URL the default destination,
# which is wrong for capabilities without a link; the supervisor takes "/".
client.set_default_url(base_url + "/")
client.retrieve_capabilities(base_url + "/capability")

if request["action"] == "capabilities":
    reply = {
        label: json.loads(mplane.model.unparse_json(client.capability_for(label)))
        for label in client.capability_labels()
    }
elif request["action"] == "capabilities_by_token":
    # Several components may offer the same label (every probe's ping-average-ip4).
    reply = {
        token: json.loads(mplane.model.unparse_json(client.capability_for(token)))
        for token in client.capability_tokens()
    }
else:
    if request["capability"] is not None:
        # Lets a client that cannot see a capability still post a specification
        # for it, to test that the supervisor refuses it.
        cap = mplane.model.parse_json(json.dumps(request["capability"]))
        if not cap.get_link():
            cap.set_link(base_url + "/")
        client.handle_message(cap)
    spec = client.invoke_capability(
        request["label"], mplane.model.When(request["when"]), request["params"]
    )
    deadline = time.monotonic() + request["timeout"]
    while True:
        if spec.get_token() in client.result_tokens():
            # An immediate exception is filed by token only.
            msg = client.result_for(spec.get_token())
        else:
            # Redeems the receipt with the supervisor when no result is stored.
            msg = client.result_for(spec.get_label())
        if not isinstance(msg, mplane.model.Receipt):
            break
        if time.monotonic() > deadline:
            raise TimeoutError("no result for " + spec.get_label())
        time.sleep(request["poll_interval"])
    reply = json.loads(mplane.model.unparse_json(msg))

json.dump(reply, answer)
"""


class RIError(RuntimeError):
    """An RI program failed; the message carries the tail of its output."""


@dataclass(frozen=True)
class TLSFiles:
    """Files an RI program needs for mutual TLS.

    ``cert`` must be in the RI form (OpenSSL's text dump followed by the PEM
    block): the RI reads its own identity from the ``Subject:`` line. The PKI
    writes that form as ``hosts/<host>/cert-mplane.pem``; see
    :meth:`from_pki_bundle`.
    """

    ca_chain: Path
    cert: Path
    key: Path

    @classmethod
    def from_pki_bundle(cls, bundle: Path) -> TLSFiles:
        """The files of a PKI host bundle (``<state>/hosts/<host>``).

        The paths are resolved now: ``hosts/<host>`` is a link that the PKI
        moves on re-issue, and a revoked or superseded bundle is deleted.
        """
        bundle = bundle.resolve(strict=True)
        return cls(bundle / "chain.pem", bundle / "cert-mplane.pem", bundle / "key.pem")

    def as_ri_section(self) -> dict[str, str]:
        return {
            "ca-chain": str(self.ca_chain.resolve()),
            "cert": str(self.cert.resolve()),
            "key": str(self.key.resolve()),
        }


# --- the venv ----------------------------------------------------------------


def _python311() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if found is None:
        raise RIError("mplane-sdk 0.9.0 needs Python 3.11 (ssl.wrap_socket is gone in 3.12)")
    return found


def _venv_fingerprint(python: str) -> str:
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    material = json.dumps(
        {"python": version, "requirements": RI_REQUIREMENTS, "shim": _shim_files()},
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """Where tests keep RI venvs: ``$PROBEFORGE_RI_CACHE``, else the repo's ``.cache/mplane-ri``."""
    configured = os.environ.get("PROBEFORGE_RI_CACHE")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[1] / ".cache" / "mplane-ri"


def ri_python(venv: Path) -> Path:
    """The interpreter of an RI venv made by :func:`ri_venv`."""
    return venv / "bin" / "python"


def ri_venv(cache_dir: Path) -> Path:
    """Return a Python 3.11 venv with the pinned RI installed, creating it once.

    The directory name carries a fingerprint of the interpreter, the pins and
    the shim, so changing any of them builds a fresh venv instead of reusing a
    stale one. Needs PyPI (or the pip configuration's mirror) on first use.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    python = _python311()
    venv = cache_dir / f"venv-{_venv_fingerprint(python)}"
    marker = venv / ".probeforge-complete"
    if marker.is_file():
        return venv
    # The lock serialises parallel test workers; whoever waited finds it built.
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():
            return venv
        # Holding the lock, any build directory left over is from a run that
        # was interrupted: never reuse it.
        for stale in cache_dir.glob(".venv-build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if venv.exists():
            shutil.rmtree(venv)
        build = Path(tempfile.mkdtemp(prefix=".venv-build-", dir=cache_dir))
        try:
            _build_venv(python, build)
            # mkdtemp made it private; the venv is for whoever runs the tests.
            build.chmod(0o755)
            # Renaming is safe because the RI is only ever started as
            # "<venv>/bin/python <script>": script shebangs keep the build path,
            # but the interpreter finds its venv relative to itself.
            build.rename(venv)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        return venv


def _supervisor_artifacts() -> Path:
    """The directory of the artifact cache holding the RI's pinned files, verified, fetched
    from upstream (PyPI) first for whatever is missing."""
    cache = Cache(resolve_cache_dir())
    wanted = load_manifest().group("supervisor")
    try:
        fetched = fetch(cache, wanted, resolve_mirrors([]))
    except ArtifactError as exc:
        raise RIError(f"the mPlane RI's files are not in the artifact cache {cache.directory} "
                      f"and could not be fetched ({exc}): run `probeforge-artifacts fetch "
                      "--group supervisor` where PyPI is reachable, or copy them in") from exc
    return fetched[0].path.parent


def _build_venv(python: str, target: Path) -> None:
    subprocess.run([python, "-m", "venv", str(target)], check=True)
    venv_python = str(ri_python(target))
    # Offline from the verified cache: what runs is what the manifest pins (mplane-sdk is an
    # sdist; the cache also holds the setuptools and wheel its build needs).
    subprocess.run(
        [
            venv_python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--no-index",
            "--find-links",
            str(_supervisor_artifacts()),
            *RI_REQUIREMENTS,
        ],
        check=True,
    )
    site_packages = Path(
        subprocess.run(
            [venv_python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    for name, text in _shim_files().items():
        (site_packages / name).write_text(text)
    (target / ".probeforge-complete").write_text(
        json.dumps({"requirements": RI_REQUIREMENTS}, indent=2) + "\n"
    )


# --- helpers -----------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _render_authz_tables(
    roles: Mapping[str, Sequence[str]], authorizations: Mapping[str, Sequence[str]]
) -> str:
    """``[Roles]`` (identity -> roles) and ``[Authorizations]`` (capability
    label substring -> roles), rendered by the project's one renderer,
    :func:`pki.authz.render_authz`.

    That renderer writes what it is given, so the text is read back here as
    the RI reads it: a key or role that would not come back unchanged
    (``=``, ``:``, ``,``, a line break, surrounding blanks, an empty name)
    raises ``ValueError`` rather than grant something else.
    """
    text = render_authz(HARNESS_AUTHZ_NAME, roles, authorizations)
    parser = _new_config()
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise ValueError(f"authorization tables do not render cleanly: {exc}") from None
    for section, table in (("Roles", roles), ("Authorizations", authorizations)):
        wanted = {key: sorted(values) for key, values in table.items()}
        read_back = {key: sorted(value.split(",")) for key, value in parser[section].items()}
        names = [*wanted, *(role for values in wanted.values() for role in values)]
        if read_back != wanted or not all(name.strip() for name in names):
            raise ValueError(f"[{section}]: the RI would not read back {dict(table)!r}")
    return text


def _new_config() -> configparser.ConfigParser:
    # The RI keeps key case (optionxform = str): identities are case-sensitive.
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    return parser


def _config_text(parser: configparser.ConfigParser) -> str:
    for section in parser.sections():
        for key, value in parser[section].items():
            # The RI reads with interpolation on; a "%" would be misread there.
            if "%" in key or "%" in value:
                raise ValueError(f"[{section}] {key}: '%' cannot pass through the RI's parser")
    out = io.StringIO()
    parser.write(out)
    return out.getvalue()


def _authz_sections(
    roles: Mapping[str, Sequence[str]] | None,
    authorizations: Mapping[str, Sequence[str]] | None,
    authz_ini: str | None,
) -> configparser.ConfigParser:
    if authz_ini is not None and (roles is not None or authorizations is not None):
        raise ValueError("give either roles/authorizations or authz_ini, not both")
    parser = _new_config()
    if authz_ini is not None:
        parser.read_string(authz_ini)
        extra = set(parser.sections()) - {"Roles", "Authorizations"}
        if extra:
            raise ValueError(f"authz_ini may only hold [Roles] and [Authorizations], not {extra}")
    else:
        parser.read_string(_render_authz_tables(roles or {}, authorizations or {}))
    # With TLS the RI raises KeyError on a missing section; empty means deny all.
    for section in ("Roles", "Authorizations"):
        if not parser.has_section(section):
            parser.add_section(section)
    return parser


def _ri_env() -> dict[str, str]:
    env = dict(os.environ)
    # Unbuffered so the log shows progress while waiting, and nothing from the
    # test's own environment may leak into the RI venv's import path.
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return env


# --- running RI programs -----------------------------------------------------


class _RIProcess:
    """One RI program in its own process group, logging to a file.

    As a context manager it writes ``config_text`` to ``config_path``, starts ``script``
    and waits until ``_wait_ready`` says the program is ready; leaving (or failing to
    become ready) stops it.
    """

    script: str
    log_path: Path
    config_path: Path
    config_text: str

    def __init__(self, venv: Path, work_dir: Path, stop_timeout: float) -> None:
        self.venv = venv
        self.work_dir = work_dir
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _start(self, script: str) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        argv = [str(ri_python(self.venv)), str(self.venv / "bin" / script)]
        argv += ["--config", str(self.config_path)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=self.work_dir,
                env=_ri_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: ping children of the component go with it.
                start_new_session=True,
            )

    def _check_alive(self, what: str) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RIError(
                f"{what} exited with {self.process.returncode} while starting; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            # Only while unreaped: until then the group id cannot be reused.
            if process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                continue
            break
        process.wait()

    def _wait_ready(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        self._start(self.script)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class RISupervisor(_RIProcess):
    """``mpsup`` in the component-initiated workflow on both sides.

    Components register, poll and post results on ``component_port``;
    clients list capabilities (``/capability``) and post specifications and
    redemptions (``/``) on ``client_port``. With ``tls`` both sides require a
    client certificate, and ``roles``/``authorizations`` (or ``authz_ini``)
    decide which client identity may see and run which capability; anything
    unlisted is denied. Without ``tls`` the RI switches authorization off.
    The RI binds all interfaces whatever ``host`` says; ``host`` is what goes
    into links and what readiness is checked against.
    """

    script = "mpsup"

    def __init__(
        self,
        venv: Path,
        work_dir: Path,
        *,
        component_port: int,
        client_port: int,
        host: str = "127.0.0.1",
        tls: TLSFiles | None = None,
        roles: Mapping[str, Sequence[str]] | None = None,
        authorizations: Mapping[str, Sequence[str]] | None = None,
        authz_ini: str | None = None,
        registry_preload: Path | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(venv, work_dir, stop_timeout)
        self.host = host
        self.component_port = component_port
        self.client_port = client_port
        self.tls = tls
        self.start_timeout = start_timeout
        self.config_path = work_dir / "supervisor.conf"
        self.log_path = work_dir / "mpsup.log"
        self.config_text = self._render(roles, authorizations, authz_ini, registry_preload)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def component_url(self) -> str:
        """Where components register (base URL, no path)."""
        return f"{self.scheme}://{self.host}:{self.component_port}"

    @property
    def client_url(self) -> str:
        """Where clients list capabilities and post specifications."""
        return f"{self.scheme}://{self.host}:{self.client_port}"

    def _render(
        self,
        roles: Mapping[str, Sequence[str]] | None,
        authorizations: Mapping[str, Sequence[str]] | None,
        authz_ini: str | None,
        registry_preload: Path | None,
    ) -> str:
        parser = _authz_sections(roles, authorizations, authz_ini)
        if self.tls is not None:
            parser["TLS"] = self.tls.as_ri_section()
        # The supervisor's side towards components is an RI *client* listening
        # for component-initiated registrations (mplane.client.HttpListenerClient).
        # The RI reads specification-path only if registration-path is set.
        parser["client"] = {
            "workflow": "component-initiated",
            "listen-port": str(self.component_port),
            "registration-path": REGISTRATION_PATH,
            "specification-path": SPECIFICATION_PATH,
            "result-path": RESULT_PATH,
            # Put into each relayed specification as the place for results.
            "listen-spec-link": f"{self.component_url}/",
        }
        # The side towards clients is an RI *component* that clients initiate
        # to (mplane.component.ListenerHttpComponent).
        component = {
            "workflow": "client-initiated",
            "listen-port": str(self.client_port),
            # Becomes the link of every capability shown to clients.
            "listen-cap-link": f"{self.client_url}/",
            "registry_uri": CORE_REGISTRY,
        }
        if registry_preload is not None:
            # Registries of other components' elements (e.g. GLIMPSE's).
            component["registry_preload"] = str(registry_preload.resolve())
        parser["component"] = component
        return _config_text(parser)

    def _wait_ready(self) -> None:
        """Until both ports listen."""
        deadline = time.monotonic() + self.start_timeout
        pending = {self.component_port, self.client_port}
        while pending:
            self._check_alive("mpsup")
            pending = {p for p in pending if not _tcp_open(self.host, p)}
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RIError(
                    f"mpsup not listening on {sorted(pending)} after {self.start_timeout} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)


class RIComponent(_RIProcess):
    """``mpcom`` with the RI ping module, registering to a supervisor.

    ``supervisor_url`` is the supervisor's component-facing base URL; its
    scheme must match whether ``tls`` is given (the RI derives the scheme
    from that). With TLS, ``roles``/``authorizations`` (or ``authz_ini``)
    must let the *supervisor's* identity use the ping capabilities, or the
    RI component exits without registering. Start-up waits for the RI's
    "registered" log line and then, if ``wait_client_url`` is given, until a
    client (``wait_client_tls``) sees ``wait_labels`` there.
    """

    script = "mpcom"

    def __init__(
        self,
        venv: Path,
        work_dir: Path,
        *,
        supervisor_url: str,
        tls: TLSFiles | None = None,
        roles: Mapping[str, Sequence[str]] | None = None,
        authorizations: Mapping[str, Sequence[str]] | None = None,
        authz_ini: str | None = None,
        ip4addr: str | None = "127.0.0.1",
        ip6addr: str | None = None,
        wait_client_url: str | None = None,
        wait_client_tls: TLSFiles | None = None,
        wait_labels: Sequence[str] = RI_PING_LABELS,
        start_timeout: float = 60.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(venv, work_dir, stop_timeout)
        url = urlsplit(supervisor_url)
        if url.scheme != ("https" if tls else "http") or not url.hostname:
            raise ValueError(f"{supervisor_url!r} does not fit tls={tls!r}")
        self.supervisor_url = supervisor_url
        self.tls = tls
        self.wait_client_url = wait_client_url
        self.wait_client_tls = wait_client_tls
        self.wait_labels = tuple(wait_labels)
        self.start_timeout = start_timeout
        self.config_path = work_dir / "component.conf"
        self.log_path = work_dir / "mpcom.log"

        parser = _authz_sections(roles, authorizations, authz_ini)
        if tls is not None:
            parser["TLS"] = tls.as_ri_section()
        # The RI component spells these keys with underscores, unlike the
        # supervisor's hyphens; it builds its URL from host and port.
        parser["component"] = {
            "workflow": "component-initiated",
            "client_host": url.hostname,
            "client_port": str(url.port or (443 if tls else 80)),
            "registration_path": REGISTRATION_PATH,
            "specification_path": SPECIFICATION_PATH,
            "result_path": RESULT_PATH,
            "registry_uri": CORE_REGISTRY,
        }
        module = {"module": "mplane.components.ping"}
        if ip4addr is not None:
            module["ip4addr"] = ip4addr
        if ip6addr is not None:
            module["ip6addr"] = ip6addr
        parser["module_ping"] = module
        self.config_text = _config_text(parser)

    def _wait_ready(self) -> None:
        """Until registered, and the capabilities are listed if ``wait_client_url`` is given."""
        deadline = time.monotonic() + self.start_timeout
        # Printed by the RI once the registration POST was answered 200.
        while "Checking for Specifications" not in self.log_tail(400):
            self._check_alive("mpcom")
            if time.monotonic() > deadline:
                raise RIError(f"mpcom did not register; log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.1)
        if self.wait_client_url is None:
            return
        # The supervisor relays each capability on its own loop tick, so the
        # index can be incomplete right after registration.
        seen: list[str] = []
        while True:
            self._check_alive("mpcom")
            with contextlib.suppress(RIError):
                seen = list_capabilities(
                    self.venv, self.wait_client_url, tls=self.wait_client_tls, timeout=15.0
                )
                if set(self.wait_labels) <= set(seen):
                    return
            if time.monotonic() > deadline:
                raise RIError(
                    f"client at {self.wait_client_url} sees {seen}, not {list(self.wait_labels)}; "
                    f"mpcom log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.5)


# --- the RI client -----------------------------------------------------------


def _run_client(venv: Path, request: dict[str, Any], timeout: float) -> Any:
    preload = request.get("registry_preload")
    request = {
        "registry": CORE_REGISTRY,
        **request,
        "tls": None if request.get("tls") is None else request["tls"].as_ri_section(),
        "registry_preload": None if preload is None else str(Path(preload).resolve()),
    }
    try:
        done = subprocess.run(
            [str(ri_python(venv)), "-c", _CLIENT_DRIVER],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=_ri_env(),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise RIError(f"RI client gave no answer within {timeout} s") from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        # The exception that ended the client first, e.g. a refused TLS handshake
        # ("... Caused by SSLError(...)"), then the traceback for context.
        final = lines[-1] if lines else f"exit status {done.returncode}"
        tail = "\n".join(lines[-20:])
        raise RIError(
            f"RI client failed ({request['action']} at {request['url']}): {final}\n{tail}"
        )
    return json.loads(done.stdout)


def fetch_capabilities(
    venv: Path,
    url: str,
    *,
    tls: TLSFiles | None = None,
    timeout: float = 30.0,
    registry_preload: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Capabilities the client identity may see at ``url``, by label, as JSON."""
    reply: dict[str, dict[str, Any]] = _run_client(
        venv,
        {"action": "capabilities", "url": url, "tls": tls, "registry_preload": registry_preload},
        timeout,
    )
    return reply


def capabilities_by_token(
    venv: Path,
    url: str,
    *,
    tls: TLSFiles | None = None,
    timeout: float = 30.0,
    registry_preload: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Every capability the client identity may see at ``url``, by token (labels repeat when
    several components offer the same measurement), as JSON."""
    reply: dict[str, dict[str, Any]] = _run_client(
        venv,
        {"action": "capabilities_by_token", "url": url, "tls": tls,
         "registry_preload": registry_preload},
        timeout,
    )
    return reply


def list_capabilities(
    venv: Path,
    url: str,
    *,
    tls: TLSFiles | None = None,
    timeout: float = 30.0,
    registry_preload: Path | None = None,
) -> list[str]:
    """Labels of the capabilities the client identity may see at ``url``."""
    return sorted(
        fetch_capabilities(venv, url, tls=tls, timeout=timeout, registry_preload=registry_preload)
    )


def run_specification(
    venv: Path,
    url: str,
    label: str,
    params: Mapping[str, str],
    *,
    tls: TLSFiles | None = None,
    when: str = "now + 3s / 1s",
    capability: Mapping[str, Any] | None = None,
    timeout: float = 90.0,
    poll_interval: float = 1.0,
    registry_preload: Path | None = None,
) -> dict[str, Any]:
    """Run capability ``label`` (or token) through the supervisor at ``url``; return the
    final message as JSON: a result (``"result"`` key) or an exception
    (``"exception"`` and ``"message"`` keys, e.g. an authorization refusal).

    The RI client can only invoke capabilities it has seen; ``capability``
    (JSON as :func:`fetch_capabilities` returns it) lets an identity that may
    not see it post a specification anyway. Expect about 5 s more than the
    measurement: the RI supervisor blocks on every specification POST.
    """
    request = {
        "action": "run",
        "url": url,
        "tls": tls,
        "label": label,
        "params": dict(params),
        "when": when,
        "capability": None if capability is None else dict(capability),
        "timeout": timeout,
        "poll_interval": poll_interval,
        "registry_preload": registry_preload,
    }
    reply: dict[str, Any] = _run_client(venv, request, timeout + 30.0)
    return reply


def result_row(reply: Mapping[str, Any]) -> dict[str, Any]:
    """The one row of a result from :func:`run_specification`, by result
    column name; ``RIError`` if the reply is an exception or has other rows."""
    if reply.get("result") != "measure":
        raise RIError(f"not a result: {dict(reply)!r}")
    rows = reply["resultvalues"]
    if len(rows) != 1:
        raise RIError(f"{len(rows)} result rows, not one: {dict(reply)!r}")
    return dict(zip(reply["results"], rows[0], strict=True))
