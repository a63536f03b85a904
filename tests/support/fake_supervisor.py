# SPDX-License-Identifier: Apache-2.0
"""A scripted mPlane supervisor for hostile-peer tests of the probe daemon.

Why a test double: the real RI supervisor (rig/mplane_ri.py, used for interop in
tests/test_probe_daemon_ri.py) only ever hands out well-formed specifications and answers every
request promptly with 200. It cannot send a broken envelope, an oversized or trickled body, a
500 or a connection reset, nor refuse results for a while: exactly the inputs the robustness
tests need. This double serves the same three component-facing endpoints (register
capabilities, poll specifications, post results) over plain HTTP on 127.0.0.1, records every
request, and answers as the test scripts it.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from probe_daemon.model import CONTENT_TYPE, REGISTRY_CORE

REGISTER, POLL, RESULT = "register", "poll", "result"
PATHS = {"/register/capability": REGISTER, "/show/specification": POLL,
         "/register/result": RESULT}
# More than the daemon's transport.MAX_BODY (4 MiB).
OVERSIZED = 5 * 1024 * 1024
# No hostile behaviour holds a connection longer than this, whatever the daemon does.
HOSTILE_LIMIT = 60.0

# Scripted behaviours: an int is an HTTP status with an empty body; the strings are
#   "reset"             close the connection with a TCP RST, no answer
#   "silent"            read the request, never answer
#   "trickle"           answer 200 with a body announced as 100 kB, sent one byte per 0.2 s
#   "oversized"         a 5 MiB body with its Content-Length
#   "oversized-unsized" a 5 MiB body without Content-Length (ends when the connection closes)
Behaviour = int | str


@dataclass
class Request:
    kind: str  # register, poll, result (or the path when unknown)
    method: str
    path: str
    body: bytes
    answer: Behaviour  # the status answered, or the hostile behaviour used
    scripted: bool  # the answer came from misbehave()
    at: float  # time.monotonic() when it arrived

    def message(self) -> Any:
        return json.loads(self.body)


def specification(label: str, token: str, parameters: dict[str, str], when: str,
                  results: list[str] | None = None) -> dict[str, Any]:
    """A specification as the RI supervisor hands it out."""
    return {"specification": "measure", "version": 1, "registry": REGISTRY_CORE,
            "label": label, "token": token, "when": when, "parameters": parameters,
            "results": results or []}


def interrupt(spec: dict[str, Any]) -> dict[str, Any]:
    """The RI's interrupt for a specification: the same statement under the interrupt verb."""
    out = {k: v for k, v in spec.items() if k != "specification"}
    return {"interrupt": "measure", **out}


def token_of(message: dict[str, Any]) -> str | None:
    return message.get("exception") if "exception" in message else message.get("token")


class FakeSupervisor:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        # How to answer each posted message (once the misbehave() script is used up).
        self.result_status: Callable[[dict[str, Any]], Behaviour] = lambda message: 200
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._handouts: deque[bytes] = deque()
        self._script: dict[str, deque[Behaviour]] = {REGISTER: deque(), POLL: deque(),
                                                     RESULT: deque()}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __enter__(self) -> FakeSupervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop answering: the daemon then finds the port closed."""
        if not self.closing.is_set():
            self.closing.set()
            self.server.shutdown()
            self.server.server_close()

    # -- script --------------------------------------------------------------------------

    def hand_out(self, *messages: Any) -> None:
        """The next poll gets an envelope of these messages; a bytes item is sent as it is."""
        if len(messages) == 1 and isinstance(messages[0], bytes):
            body = messages[0]
        else:
            body = json.dumps({"envelope": "message", "version": 1,
                               "contents": list(messages)}).encode()
        with self._lock:
            self._handouts.append(body)

    def misbehave(self, kind: str, *behaviours: Behaviour) -> None:
        """The next requests of this kind (register, poll, result) get these, one each."""
        with self._lock:
            self._script[kind].extend(behaviours)

    # -- what was received ---------------------------------------------------------------

    def received(self, kind: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if kind is None or r.kind == kind]

    def messages(self, delivered: bool = True) -> list[dict[str, Any]]:
        """Messages posted to the result path (only those answered 200 unless told)."""
        out = []
        for request in self.received(RESULT):
            if delivered and request.answer != 200:
                continue
            try:
                out.append(request.message())
            except ValueError:
                continue
        return out

    def of(self, token: str, kind: str, delivered: bool = True) -> list[dict[str, Any]]:
        """Delivered messages of a kind (receipt, result, exception, withdrawal) for a token."""
        return [m for m in self.messages(delivered) if kind in m and token_of(m) == token]

    def registrations(self) -> list[list[str]]:
        """The capability labels of each registration answered 200."""
        return [[c.get("label") for c in r.message().get("contents", [])]
                for r in self.received(REGISTER) if r.answer == 200]

    def wait(self, predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        kinds = [(r.kind, r.answer) for r in self.received()][-20:]
        raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}; "
                             f"last requests: {kinds}")

    def wait_one(self, token: str, kind: str, timeout: float = 20.0) -> dict[str, Any]:
        return self.wait(lambda: self.of(token, kind), timeout, f"a {kind} for {token}")[0]

    # -- serving -------------------------------------------------------------------------

    def _next(self, kind: str, body: bytes) -> tuple[Behaviour, bool]:
        with self._lock:
            if self._script.get(kind):
                return self._script[kind].popleft(), True
        if kind == RESULT:
            try:
                return self.result_status(json.loads(body)), False
            except ValueError:
                return 400, False
        return 200, False

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _poll_body(self) -> bytes:
        with self._lock:
            if self._handouts:
                return self._handouts.popleft()
        return json.dumps({"envelope": "message", "version": 1, "contents": []}).encode()


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        fake: FakeSupervisor = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        kind = PATHS.get(path, path)
        behaviour, scripted = fake._next(kind, body)
        fake._record(Request(kind, self.command, path, body, behaviour, scripted,
                             time.monotonic()))
        try:
            if isinstance(behaviour, int):
                self._answer(behaviour, self._body(fake, kind, body) if behaviour == 200 else b"")
            else:
                getattr(self, "_" + behaviour.replace("-", "_"))(fake)
        except OSError:
            pass  # the daemon gave up on us: that is what hostile behaviours are for

    def _body(self, fake: FakeSupervisor, kind: str, body: bytes) -> bytes:
        if kind == REGISTER:
            # As the RI answers: {"<label>": {"registered": "ok"}, ...}.
            labels = [c.get("label") for c in json.loads(body).get("contents", [])]
            return json.dumps({label: {"registered": "ok"} for label in labels}).encode()
        if kind == POLL:
            return fake._poll_body()
        return b""

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset(self, fake: FakeSupervisor) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _hold(self, fake: FakeSupervisor, step: Callable[[], None] | None) -> None:
        """Keep the connection until the daemon closes it (or the limit), calling step."""
        deadline = time.monotonic() + HOSTILE_LIMIT
        while time.monotonic() < deadline and not fake.closing.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.2)
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                return  # the daemon closed its end
            if step is not None:
                step()

    def _silent(self, fake: FakeSupervisor) -> None:
        self._hold(fake, None)

    def _trickle(self, fake: FakeSupervisor) -> None:
        self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: " + CONTENT_TYPE.encode()
                         + b"\r\nContent-Length: 100000\r\n\r\n{")
        self._hold(fake, lambda: self.wfile.write(b" "))  # unbuffered: sent at once

    def _oversized(self, fake: FakeSupervisor, announce: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        if announce:
            self.send_header("Content-Length", str(OVERSIZED))
        self.end_headers()
        chunk = b"[" * 65536
        for _ in range(OVERSIZED // len(chunk)):
            self.wfile.write(chunk)
        self.close_connection = True

    def _oversized_unsized(self, fake: FakeSupervisor) -> None:
        self._oversized(fake, announce=False)
