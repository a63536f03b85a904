# SPDX-License-Identifier: Apache-2.0
"""Mutual TLS over loopback with issued certificates: accepted, and refused when it must be."""

import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pki import Deployment, PKIState, revoke, sync
from tests.conftest import PASSPHRASE, rig_request


def server_context(state: PKIState, host: str, check_crl: bool) -> ssl.SSLContext:
    bundle = state.hosts_dir / host
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(bundle / "cert.pem", bundle / "key.pem")
    ctx.load_verify_locations(bundle / "chain.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    if check_crl:
        ctx.load_verify_locations(state.crl_path)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def client_context(ca_chain: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca_chain)
    ctx.load_cert_chain(cert, key)
    return ctx


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
              server_name: str = "127.0.0.1") -> dict:
    """Run one handshake on loopback; return the peer subject each side saw or the error."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["client"] = dict(x[0] for x in tls.getpeercert()["subject"])
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            seen["server_error"] = str(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            seen["server"] = dict(x[0] for x in tls.getpeercert()["subject"])
            seen["data"] = tls.recv(2)
    except (ssl.SSLError, OSError) as exc:
        seen["client_error"] = str(exc)
    thread.join(5)
    listener.close()
    return seen


def bundle_ctx(state: PKIState, host: str) -> ssl.SSLContext:
    b = state.hosts_dir / host
    return client_context(b / "chain.pem", b / "cert.pem", b / "key.pem")


def test_mutual_tls_handshake_succeeds(issued):
    seen = handshake(server_context(issued, "supervisor", check_crl=True),
                     bundle_ctx(issued, "probe-01"))
    assert seen.get("data") == b"ok", seen
    assert seen["client"]["commonName"] == "probe-01"
    assert seen["server"]["organizationalUnitName"] == "Supervisors"


def test_server_name_is_checked_against_sans(issued):
    ok = handshake(server_context(issued, "supervisor", False), bundle_ctx(issued, "operator"),
                   server_name="supervisor.test-rig.internal")
    assert ok.get("data") == b"ok", ok
    wrong = handshake(server_context(issued, "supervisor", False), bundle_ctx(issued, "operator"),
                      server_name="probe-01.test-rig.internal")
    assert "certificate verify failed" in wrong.get("client_error", "")


def test_client_only_certificate_cannot_serve(issued):
    seen = handshake(server_context(issued, "operator", False), bundle_ctx(issued, "probe-01"))
    assert "unsuitable certificate purpose" in seen.get("client_error", ""), seen


def test_revoked_client_is_refused(issued):
    revoked_copy = issued.path.parent / "revoked"
    revoked_copy.mkdir()
    for name in ("cert.pem", "key.pem", "chain.pem"):
        (revoked_copy / name).write_bytes((issued.hosts_dir / "probe-02" / name).read_bytes())
    revoke(issued, PASSPHRASE, host="probe-02", reason="key-compromise")
    client = client_context(revoked_copy / "chain.pem", revoked_copy / "cert.pem",
                            revoked_copy / "key.pem")
    seen = handshake(server_context(issued, "supervisor", check_crl=True), client)
    assert "certificate revoked" in seen.get("server_error", ""), seen
    assert "data" not in seen


def test_expired_client_is_refused(state, deployment):
    # Issued 100 days ago with a 90-day validity: expired today.
    sync(state, deployment, PASSPHRASE, now=datetime.now(UTC) - timedelta(days=100))
    expired = state.path.parent / "expired"
    expired.mkdir()
    for name in ("cert.pem", "key.pem", "chain.pem"):
        (expired / name).write_bytes((state.hosts_dir / "operator" / name).read_bytes())
    sync(state, deployment, PASSPHRASE)  # renews everyone, the server included
    client = client_context(expired / "chain.pem", expired / "cert.pem", expired / "key.pem")
    seen = handshake(server_context(state, "supervisor", check_crl=True), client)
    assert "certificate has expired" in seen.get("server_error", ""), seen


@pytest.mark.parametrize("side", ["client", "server"])
def test_foreign_ca_is_refused(issued, tmp_path, side):
    foreign = PKIState(tmp_path / "foreign")
    sync(foreign, Deployment.from_request(rig_request(deployment="foreign")), PASSPHRASE)
    # The foreign side trusts the right CA, so only its own certificate can be the problem.
    if side == "client":
        intruder = foreign.hosts_dir / "probe-01"
        client = client_context(issued.chain_path, intruder / "cert.pem", intruder / "key.pem")
        seen = handshake(server_context(issued, "supervisor", True), client)
        assert "certificate verify failed" in seen.get("server_error", ""), seen
    else:
        server = server_context(foreign, "supervisor", False)
        seen = handshake(server, bundle_ctx(issued, "probe-01"))
        assert "certificate verify failed" in seen.get("client_error", ""), seen
    assert "data" not in seen
