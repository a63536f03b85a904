# SPDX-License-Identifier: Apache-2.0
"""Tstat capturing on the probe's interface.

The firmware starts Tstat at boot (``/etc/init.d/tstat``: ``tstat -l -i eth0 -s /var/log/tstat
-T /etc/tstat/runtime.conf``) with every log switched off. Through the supervisor, with the RI
client and the operator's identity, the suite asks the probe for
``tstat-log_tcp_complete-core`` over a window; the probe daemon switches ``log_tcp_complete``
on in ``runtime.conf`` and back off when the window ends. Meanwhile the guest downloads a file
of a size of its own from an HTTP server this module runs on the host; the flow leaves through
the probe's interface, and Tstat's ``log_tcp_complete`` must then hold a line for it: the
probe as client, the server's address and port as the guest reaches them, the bytes served.

Tstat takes a runtime.conf change about 63 to 84 s after the edit (it looks at the mtime every
21 s while packets arrive and reloads after three unchanged looks), and writes its logs through
stdio buffers it flushes when that log is switched off again. So one run waits for two reloads:
about 3 to 4 minutes.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from hil_tests.targets import HilTarget
from rig.testbed import HOST_FROM_GUEST
from tests.support.tstat_logs import parse_tcp_complete

pytestmark = [pytest.mark.slow, pytest.mark.mips, pytest.mark.mplane_ri,
              pytest.mark.feature("tstat")]

LABEL = "tstat-log_tcp_complete-core"
LOG_DIR = "/var/log/tstat"
RUNTIME_CONF = "/etc/tstat/runtime.conf"
# The window covers Tstat's first reload (at most ~84 s after the edit, more on a loaded host)
# with time left for the downloads.
WINDOW_S = 150
# After the window: the second reload (switching the log off flushes it), same bound.
FLUSH_S = 150
# An odd size, so the download's flow stands out from anything else in the log.
BODY = 200_003
DOWNLOADS = 3
# What keeps packets arriving (Tstat looks at runtime.conf only in its packet loop) and shows
# the switch: a small download every few seconds.
PACE_S = 3


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    requests: dict[str, int]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        size = BODY if self.path.startswith("/big/") else 100
        self.server.requests[self.path] = self.server.requests.get(self.path, 0) + 1
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"\x00" * size)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_server() -> Iterator[_Server]:
    # On the host's loopback: QEMU's user network takes the guest's connections to 10.0.2.2
    # there.
    server = _Server(("127.0.0.1", 0), _Handler)
    server.requests = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _download(target: HilTarget, url: str) -> None:
    target.ssh.run(f"wget -q -O /dev/null {url}", timeout=60)


def _tcp_logs(target: HilTarget) -> set[str]:
    """Every log_tcp_complete file under Tstat's output directory, relative to it."""
    out = target.ssh.run(f"cd {LOG_DIR} && ls -1d */log_tcp_complete* 2>/dev/null || true")
    return {line.strip() for line in out.stdout.split("\n") if line.strip()}


def _setting(target: HilTarget, key: str) -> str:
    text = target.ssh.run(f"cat {RUNTIME_CONF}").stdout
    found = re.findall(rf"^\s*{key}\s+=\s+([0-9]+)", text, re.MULTILINE)
    assert len(found) == 1, f"{RUNTIME_CONF} must set {key} once in `key = value` form: {text}"
    return found[0]


def _interface(target: HilTarget) -> str:
    """The interface the image's init script has Tstat capture on (eth0 unless set)."""
    out = target.ssh.run("INTERFACE=eth0; [ ! -r /etc/default/tstat ] || . /etc/default/tstat; "
                         "echo $INTERFACE").stdout.strip()
    return out or "eth0"


def _diagnosis(target: HilTarget) -> str:
    done = target.ssh.run(f"/etc/init.d/tstat status; ls -lR {LOG_DIR} | tail -20; "
                          "logread | grep -i tstat | tail -20", check=False)
    return done.stdout + done.stderr


def test_tstat_runs_on_the_probes_interface(target):
    status = target.ssh.run("/etc/init.d/tstat status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    text = target.ssh.run("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; "
                          "done 2>/dev/null").stdout
    captures = [line.split() for line in text.split("\n")
                if line.split() and line.split()[0].endswith("/tstat")]
    assert captures, f"no tstat process: {_diagnosis(target)}"
    words = captures[0]
    # Live capture on the probe's interface, runtime.conf the daemon switches.
    assert words[words.index("-i") + 1] == _interface(target) and "-l" in words, words
    assert words[words.index("-T") + 1] == RUNTIME_CONF, words
    assert words[words.index("-s") + 1] == LOG_DIR, words
    # Off between measurements: the daemon switches it on only for a window.
    assert _setting(target, "log_tcp_complete") == "0"


def test_tstat_logs_a_download_through_the_probe(target, hil_env, http_server):
    if hil_env.testbed is None:
        pytest.skip("needs a server the probe reaches at 10.0.2.2 (run without --hil-inventory)")
    tokens = hil_env.wait_capabilities(target, {LABEL}, timeout=60)
    assert LABEL in tokens, f"{target.name} does not offer {LABEL}"
    base = f"http://{HOST_FROM_GUEST}:{http_server.server_address[1]}"
    before = _tcp_logs(target)

    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        reply_future: Future[dict[str, Any]] = pool.submit(
            hil_env.run, tokens[LABEL], {"observer.interface": _interface(target)},
            f"now + {WINDOW_S}s", timeout=WINDOW_S + 90)
        # Tstat opens a new output directory with log_tcp_complete when it takes the switch.
        new: set[str] = set()
        pace = 0
        while not new and time.monotonic() - started < WINDOW_S - 20:
            _download(target, f"{base}/pace/{target.name}/{pace}")
            pace += 1
            time.sleep(PACE_S)
            new = _tcp_logs(target) - before
            assert not reply_future.done(), reply_future.result()
        assert new, (f"Tstat opened no log_tcp_complete within {WINDOW_S - 20} s of the "
                     f"switch: {_diagnosis(target)}")
        switched_after = time.monotonic() - started
        assert _setting(target, "log_tcp_complete") == "1"
        # Paths of the target's own: the server serves every target of the run.
        big = [f"/big/{target.name}/{number}" for number in range(DOWNLOADS)]
        for path in big:
            _download(target, base + path)
        assert all(http_server.requests.get(path) == 1 for path in big), http_server.requests
        reply = reply_future.result()
    assert reply.get("result") == "measure", reply
    rows = [dict(zip(reply["results"], row, strict=True)) for row in reply["resultvalues"]]
    assert len(rows) == 1, reply
    row = rows[0]
    assert row["tstat.log.class"] == "log_tcp_complete" and row["tstat.log.path"] == LOG_DIR
    names = set(row["tstat.log.names"].split(","))
    # The file Tstat opened for the window is the one the result names.
    assert new <= names, (new, row)
    assert int(row["tstat.log.files"]) >= 1
    # Switched back when the window ended.
    assert _setting(target, "log_tcp_complete") == "0"

    # Tstat writes the lines out when it takes the switch back (or its buffer fills).
    log_file = sorted(new)[-1]
    port = str(http_server.server_address[1])
    flushed = time.monotonic()
    ours: list[dict[str, str]] = []
    while time.monotonic() - flushed < FLUSH_S:
        rows_in_log = parse_tcp_complete(target.ssh.run(f"cat {LOG_DIR}/{log_file}").stdout)
        ours = [r for r in rows_in_log
                if r.get("s_ip") == HOST_FROM_GUEST and r.get("s_port") == port
                and int(r.get("s_bytes_uniq", "0")) >= BODY]
        if len(ours) >= DOWNLOADS:
            break
        _download(target, f"{base}/pace/{target.name}/{pace}")
        pace += 1
        time.sleep(PACE_S)
    assert len(ours) >= DOWNLOADS, (
        f"{LOG_DIR}/{log_file} has {len(ours)} of the {DOWNLOADS} downloads from "
        f"{HOST_FROM_GUEST}:{port} {FLUSH_S} s after the window: {_diagnosis(target)}")
    for flow in ours:
        # The probe is the client, from its own address on eth0; the request went up, the body
        # came down (plus headers), and both sides closed.
        assert flow["c_ip"] == target.source_ip4, flow
        assert int(flow["c_bytes_uniq"]) > 0, flow
        assert BODY <= int(flow["s_bytes_uniq"]) < BODY + 1024, flow
        assert int(flow["c_fin_cnt"]) >= 1 and int(flow["s_fin_cnt"]) >= 1, flow
    print(f"tstat: log_tcp_complete switched on after {switched_after:.0f} s, "
          f"{len(ours)} downloads in {log_file} {time.monotonic() - flushed:.0f} s after the "
          "window")
