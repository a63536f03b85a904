# SPDX-License-Identifier: Apache-2.0
"""http-download against real HTTP(S) servers on loopback (IPv4, IPv6, TLS from our PKI)."""

import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pki import Deployment, PKIState, sync
from probe_daemon.measurements import http_download
from probe_daemon.measurements.base import Job, MeasurementError
from probe_daemon.measurements.http_download import ELEMENTS, HttpDownloadMeasurement
from probe_daemon.model import REGISTRY_CORE
from tests.conftest import PASSPHRASE, rig_request
from tests.support import jobs
from tests.support.imports import imported_roots

RELEASE = threading.Event()  # lets /hang handlers end when the module's servers stop


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:
        pass

    def send_body(self, code: int, body: bytes, **headers: str) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        route, *args = self.path.strip("/").split("/")
        if route == "size":
            self.send_body(200, b"x" * int(args[0]))
        elif route == "redirect":
            left = int(args[0])
            if left:
                self.send_body(302, b"moved", Location=f"/redirect/{left - 1}")
            else:
                self.send_body(200, b"done")
        elif route == "goto":  # absolute redirect to another server
            self.send_body(307, b"", Location="/".join(args))
        elif route == "loop":
            self.send_body(301, b"again", Location="/loop")
        elif route == "missing":
            self.send_body(404, b"not found")
        elif route == "empty":
            self.send_response(204)
            self.end_headers()
        elif route == "slow":
            time.sleep(int(args[0]) / 1000)
            self.send_body(200, b"y" * 100)
        elif route == "throttle":
            chunks, size, interval_ms = (int(a) for a in args)
            self.send_response(200)
            self.send_header("Content-Length", str(chunks * size))
            self.end_headers()
            for index in range(chunks):
                if index:
                    time.sleep(interval_ms / 1000)
                self.wfile.write(b"z" * size)
                self.wfile.flush()
        elif route == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(int(args[0])):
                self.wfile.write(b"3e8\r\n" + b"c" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif route == "truncated":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"t" * 100)
            self.close_connection = True
        elif route == "hang":
            RELEASE.wait(20)
        else:
            self.send_body(400, b"no such route")


class Server(ThreadingHTTPServer):
    daemon_threads = True


class Server6(Server):
    address_family = socket.AF_INET6


def serve(server: ThreadingHTTPServer) -> str:
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    host, port = server.server_address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Base URLs: http on 127.0.0.1 and ::1, https on both with a certificate of our PKI."""
    state = PKIState(tmp_path_factory.mktemp("pki") / "pki")
    request = rig_request()
    for host in request["hosts"]:
        if host["name"] == "probe-01":
            host["ip_addresses"] = ["127.0.0.1", "::1"]
    sync(state, Deployment.from_request(request), PASSPHRASE)
    bundle = state.hosts_dir / "probe-01"
    # Serve the issuing CA with the leaf: the probe is only given the root.
    fullchain = bundle.parent.parent / "probe-01-fullchain.pem"
    fullchain.write_bytes((bundle / "cert.pem").read_bytes()
                          + (bundle / "chain.pem").read_bytes())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(fullchain, bundle / "key.pem")

    started: list[ThreadingHTTPServer] = []
    urls: dict[str, str] = {"ca": str(bundle / "ca.pem")}
    for key, cls, address, tls in (("http4", Server, "127.0.0.1", False),
                                   ("http6", Server6, "::1", False),
                                   ("https4", Server, "127.0.0.1", True),
                                   ("https6", Server6, "::1", True)):
        server = cls((address, 0), Handler)
        if tls:
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        started.append(server)
        urls[key] = f"{'https' if tls else 'http'}://{serve(server)}"
    yield urls
    RELEASE.set()
    for server in started:
        server.shutdown()
        server.server_close()


def make_job(url: str, when: str = "now") -> Job:
    return jobs.make_job("http-download", when, destination_url=url)


def download(url: str, **options: str) -> dict:
    rows = list(HttpDownloadMeasurement(options).run(make_job(url)))
    assert len(rows) == 1
    return dict(rows[0])


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_capability_and_elements():
    (cap,) = HttpDownloadMeasurement({}).capabilities()
    assert cap.label == "http-download"
    assert dict(cap.parameters) == {"destination.url": "*"}
    assert cap.results == ("time", "http.code", "http.redirectcount", "delay.firstbyte.ms",
                           "duration.ms", "octets.layer7", "bandwidth.imputed.kbps")
    assert cap.when == "now ... future / 10s"
    assert cap.registry != REGISTRY_CORE
    assert set(ELEMENTS) == {"http.code", "http.redirectcount"}
    assert HttpDownloadMeasurement({}).unavailable() is None


def test_bad_options_and_parameters_are_reported():
    assert "max_redirects" in HttpDownloadMeasurement({"max_redirects": "x"}).unavailable()
    assert "ca_file" in HttpDownloadMeasurement({"ca_file": "/nonexistent.pem"}).unavailable()
    for url in ("ftp://127.0.0.1/", "not a url", "http:///path", "http://[::1/"):
        with pytest.raises(MeasurementError, match=r"destination\.url"):
            list(HttpDownloadMeasurement({}).run(make_job(url, "now + 5s / 1s")))


def test_download_of_known_size(servers):
    before = datetime.now(UTC)
    row = download(servers["http4"] + "/size/123456")
    assert row["http.code"] == 200
    assert row["http.redirectcount"] == 0
    assert row["octets.layer7"] == 123456
    assert 0 <= row["delay.firstbyte.ms"] <= row["duration.ms"] < 2000
    assert row["bandwidth.imputed.kbps"] > 0
    assert before <= row["time"] <= datetime.now(UTC)


def test_chunked_and_empty_bodies(servers):
    assert download(servers["http4"] + "/chunked/50")["octets.layer7"] == 50_000
    row = download(servers["http4"] + "/empty")
    assert (row["http.code"], row["octets.layer7"], row["bandwidth.imputed.kbps"]) == (204, 0, 0)


def test_redirect_chain_is_followed_and_counted(servers):
    row = download(servers["http4"] + "/redirect/3")
    assert (row["http.code"], row["http.redirectcount"], row["octets.layer7"]) == (200, 3, 4)


def test_redirect_to_another_server(servers):
    row = download(f"{servers['http4']}/goto/{servers['http6']}/size/10")
    assert (row["http.code"], row["http.redirectcount"], row["octets.layer7"]) == (200, 1, 10)


def test_redirect_limit_reports_the_unfollowed_redirect(servers):
    row = download(servers["http4"] + "/redirect/5", max_redirects="2")
    assert (row["http.code"], row["http.redirectcount"], row["octets.layer7"]) == (302, 2, 5)
    row = download(servers["http4"] + "/loop")
    assert (row["http.code"], row["http.redirectcount"]) == (301, 5)


def test_not_found_is_a_result(servers):
    row = download(servers["http4"] + "/missing")
    assert (row["http.code"], row["octets.layer7"]) == (404, 9)


def test_slow_first_byte(servers):
    row = download(servers["http4"] + "/slow/400")
    assert row["delay.firstbyte.ms"] >= 400
    assert row["duration.ms"] >= row["delay.firstbyte.ms"]


def test_throttled_body_throughput(servers):
    # 21 chunks of 8 KiB, 50 ms apart: 8192 * 8 / 0.05 s = 1311 kbps after the first chunk.
    row = download(servers["http4"] + "/throttle/21/8192/50")
    assert row["octets.layer7"] == 21 * 8192
    assert row["delay.firstbyte.ms"] < 300
    assert row["duration.ms"] >= 1000
    assert 1311 * 0.5 < row["bandwidth.imputed.kbps"] < 1311 * 1.1, row


def test_max_bytes_stops_the_download(servers):
    row = download(servers["http4"] + "/size/500000", max_bytes="10000")
    assert (row["http.code"], row["octets.layer7"]) == (200, 10000)


def test_ipv6_literal(servers):
    row = download(servers["http6"] + "/size/1000")
    assert (row["http.code"], row["octets.layer7"]) == (200, 1000)


def test_connection_refused_single_shot():
    with pytest.raises(MeasurementError, match=r"connection to 127\.0\.0\.1:\d+ refused"):
        download(refused_url())


def test_name_resolution_failure(monkeypatch):
    # Hermetic: no query leaves the machine.
    def fail(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(MeasurementError, match=r"cannot resolve nowhere\.invalid: Name or"):
        download("http://nowhere.invalid/")


def test_timeout_waiting_for_response(servers):
    started = time.monotonic()
    with pytest.raises(MeasurementError, match="timed out after 1 s waiting for the response"):
        download(servers["http4"] + "/hang", timeout_s="1")
    assert time.monotonic() - started < 3


def test_truncated_body(servers):
    with pytest.raises(MeasurementError, match="connection closed reading the body after 100 "
                                               "bytes, 900 bytes missing"):
        download(servers["http4"] + "/truncated")


def test_repeated_job_reports_failures_as_rows():
    job = make_job(refused_url(), "now + 2s / 1s")
    started = time.monotonic()
    rows = list(HttpDownloadMeasurement({}).run(job))
    assert 1 < time.monotonic() - started < 2.5
    assert len(rows) == 2
    for row in rows:
        assert row["http.code"] == 0
        assert row["delay.firstbyte.ms"] == row["bandwidth.imputed.kbps"] == "*"
        assert row["octets.layer7"] == row["http.redirectcount"] == 0
        assert row["duration.ms"] >= 0
    assert rows[1]["time"] - rows[0]["time"] >= timedelta(seconds=0.9)


def test_stop_ends_a_repeated_job(servers):
    job = make_job(servers["http4"] + "/size/10", "now ... future / 10s")
    rows = []
    for row in HttpDownloadMeasurement({}).run(job):
        rows.append(row)
        job.stop.set()
    assert [r["http.code"] for r in rows] == [200]


def test_https_verified_with_ca_file(servers):
    for key in ("https4", "https6"):
        row = download(servers[key] + "/size/5000", ca_file=servers["ca"])
        assert (row["http.code"], row["octets.layer7"]) == (200, 5000)


def test_https_redirect_to_http_is_followed(servers):
    row = download(f"{servers['https4']}/goto/{servers['http4']}/redirect/1",
                   ca_file=servers["ca"])
    assert (row["http.code"], row["http.redirectcount"]) == (200, 2)


def test_https_untrusted_without_our_ca(servers, tmp_path: Path):
    # The system store does not hold the deployment's root.
    with pytest.raises(MeasurementError, match=r"TLS certificate of 127\.0\.0\.1:\d+ not trusted"):
        download(servers["https4"] + "/size/10")
    other = tmp_path / "other"
    state = PKIState(other)
    sync(state, Deployment.from_request(rig_request()), PASSPHRASE)
    with pytest.raises(MeasurementError, match="not trusted"):
        download(servers["https4"] + "/size/10", ca_file=str(state.hosts_dir / "probe-01"
                                                             / "ca.pem"))


def test_no_ssl_module_refuses_https(monkeypatch):
    monkeypatch.setattr(http_download, "ssl", None)
    with pytest.raises(MeasurementError, match="no ssl module"):
        download("https://127.0.0.1/")


def test_measurement_module_uses_only_the_standard_library():
    imported = imported_roots(http_download.__file__)
    assert imported - {"probe_daemon"} <= set(sys.stdlib_module_names)
