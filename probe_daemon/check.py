# SPDX-License-Identifier: Apache-2.0
"""``probe-daemon --check``: say exactly what is wrong with the configuration and credentials."""

import os
import ssl
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from probe_daemon.catalog import Catalog, load_measurements
from probe_daemon.settings import Config
from probe_daemon.transport import Supervisor, TransportError, tls_context


def _cert_dates(path: Path) -> tuple[datetime, datetime] | None:
    # The stdlib's only certificate decoder; private, but present in every CPython 3.
    decode = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]
    if decode is None:
        return None
    info = decode(str(path))
    parse = ssl.cert_time_to_seconds
    return (datetime.fromtimestamp(parse(info["notBefore"]), UTC),
            datetime.fromtimestamp(parse(info["notAfter"]), UTC))


def _credentials(config: Config) -> list[str]:
    problems = []
    for name in ("ca_file", "cert_file", "key_file"):
        path = Path(getattr(config, name))
        if not path.is_file():
            problems.append(f"[mplane] {name} = {path}: no such file; deploy the host's "
                            "bundle from the PKI (playbooks/pki.yml) there")
    if problems:
        return problems
    key_mode = stat.S_IMODE(Path(config.key_file).stat().st_mode)
    if key_mode & 0o077:
        problems.append(f"{config.key_file} is mode {key_mode:04o}; the private key must be "
                        f"0600: chmod 600 {config.key_file}")
    try:
        tls_context(config.ca_file, config.cert_file, config.key_file)
    except ssl.SSLError as exc:
        problems.append(f"certificate, key or CA file unusable ({exc.reason or exc}): check "
                        f"that {config.cert_file} and {config.key_file} are the same host's "
                        "pair")
    except OSError as exc:
        problems.append(f"cannot read credentials: {exc}")
    try:
        dates = _cert_dates(Path(config.cert_file))
    except (ssl.SSLError, ValueError, OSError) as exc:
        problems.append(f"{config.cert_file} is not a PEM certificate ({exc})")
        dates = None
    if dates is not None:
        now = datetime.now(UTC)
        if now < dates[0]:
            problems.append(f"{config.cert_file} is not valid before {dates[0]:%Y-%m-%d %H:%M} "
                            "UTC: set the clock (NTP)")
        elif now > dates[1]:
            problems.append(f"{config.cert_file} expired on {dates[1]:%Y-%m-%d}: re-run "
                            "playbooks/pki.yml and redeploy the host")
    return problems


def run_check(config: Config, contact: bool = True) -> list[str]:
    """Problems found, each one line naming the fix; empty when all is well."""
    problems: list[str] = []
    if config.tls:
        problems += _credentials(config)
    spool = Path(config.spool_dir)
    try:
        spool.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=spool):
            pass
    except OSError as exc:
        problems.append(f"[daemon] spool_dir = {spool}: not writable ({exc.strerror})")
    try:
        catalog = Catalog(load_measurements(config), config.device)
    except (ValueError, ImportError) as exc:
        problems.append(f"measurements: {exc}")
    else:
        if not catalog.offers:
            problems.append("no capability to offer: enable at least one measurement")
    if contact and not problems:
        context = tls_context(config.ca_file, config.cert_file, config.key_file) \
            if config.tls else None
        try:
            Supervisor(config.supervisor_url, context, min(config.timeout, 5.0)).request(
                "GET", config.specification_path)
        except TransportError as exc:
            # Not fatal: the daemon waits for its supervisor, but the operator should know.
            print(f"warning: supervisor not reachable now: {exc}")
    return problems


def report(config: Config) -> int:
    problems = run_check(config)
    for problem in problems:
        print(f"error: {problem}")
    if not problems:
        catalog = Catalog(load_measurements(config), config.device)
        for name, reason in catalog.withheld.items():
            print(f"note: {name} not offered: {reason}")
        print(f"ok: {len(catalog.offers)} capabilities "
              f"({', '.join(sorted(catalog.offers))}); pid {os.getpid()}")
    return 1 if problems else 0
