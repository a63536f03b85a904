# SPDX-License-Identifier: Apache-2.0
"""The probe daemon, run as a real process, against a supervisor that misbehaves.

Hostile or broken input never crashes or hangs it, interrupts and signals do what they say,
results survive refusals, outages and kill -9, and ``--check`` names every problem with its
fix. The supervisor is a scripted test double (tests/support/fake_supervisor.py): the real RI
supervisor cannot be made to send these inputs; interop with it is tests/test_probe_daemon_ri.py.
Only ping is offered, to keep runs short.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pki import Deployment, PKIState, sync
from probe_daemon.registry import MEASUREMENT_MODULES
from tests.support.fake_supervisor import (
    POLL,
    REGISTER,
    RESULT,
    FakeSupervisor,
    Request,
    interrupt,
    specification,
    token_of,
)
from tests.support.probe_daemon_proc import REPO, ProbeDaemon

OTHERS = ("traceroute", "http", "dns", "ott", "tstat")
ONLY_PING = {name: {"enabled": "no"} for name in OTHERS}
TARGET = {"destination.ip4": "127.0.0.1", "source.ip4": "127.0.0.1"}
VALID_WHEN = "now + 2s / 1s"
# The daemon must give up on a request after this many seconds ([mplane] timeout).
TIMEOUT = 2.0
# The shortest stop timeout of the init systems we ship (procd's term_timeout).
STOP_GRACE = 15.0


def ping(token: str, when: str = VALID_WHEN, label: str = "ping-average-ip4",
         **parameters: str) -> dict:
    """A ping specification as the RI hands it out (label with the supervisor's serial)."""
    return specification(f"{label}-0", token, {**TARGET, **parameters}, when)


@contextlib.contextmanager
def running(work: Path, fake: FakeSupervisor, sections: dict | None = None,
            **settings: str) -> Iterator[ProbeDaemon]:
    """The daemon as a process, polling the double every 0.2 s, once it has registered."""
    daemon = ProbeDaemon(work, fake.url, sections=ONLY_PING if sections is None else sections,
                         poll_interval=0.2, settings={"timeout": str(TIMEOUT), **settings})
    daemon.start()
    try:
        fake.wait(fake.registrations, what="the daemon's registration")
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def fake() -> Iterator[FakeSupervisor]:
    with FakeSupervisor() as supervisor:
        yield supervisor


@pytest.fixture
def daemon(tmp_path, fake) -> Iterator[ProbeDaemon]:
    with running(tmp_path, fake) as probe:
        yield probe


def alive(daemon: ProbeDaemon) -> bool:
    return daemon.process is not None and daemon.process.poll() is None


def accepted(fake: FakeSupervisor, token: str, when: str = VALID_WHEN) -> None:
    """Hand out a valid ping and wait for its receipt: the daemon is still at work."""
    fake.hand_out(ping(token, when))
    fake.wait_one(token, "receipt", timeout=20)


def assert_measured(fake: FakeSupervisor, tokens: list[str], timeout: float = 20) -> None:
    """Each token got exactly one receipt and one result of a 2 s average ping."""
    for token in tokens:
        result = fake.wait_one(token, "result", timeout=timeout)
        values = dict(zip(result["results"], result["resultvalues"][0], strict=True))
        assert values["delay.twoway.icmp.count"] == "2", result
        assert len(fake.of(token, "receipt")) == 1, token
        assert len(fake.of(token, "result")) == 1, token
        assert not fake.of(token, "exception"), token


def counted(items: list, count: int) -> list | None:
    """``items`` once there are ``count`` of them (a predicate for FakeSupervisor.wait)."""
    return items if len(items) >= count else None


def hostile(fake: FakeSupervisor, kind: str, *behaviours: object) -> list[Request]:
    """Script behaviours for the next requests of a kind; return those requests once the
    daemon has polled successfully after the last of them."""
    since = time.monotonic()
    fake.misbehave(kind, *behaviours)
    served = fake.wait(lambda: counted([r for r in fake.received(kind)
                                        if r.scripted and r.at >= since], len(behaviours)),
                       timeout=40, what=f"{kind} requests answered {behaviours}")
    fake.wait(lambda: [r for r in fake.received(POLL)
                       if r.at > served[-1].at and r.answer == 200],
              timeout=20, what="a successful poll after the misbehaviour")
    return served


def gaps(requests: list[Request]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(requests)]


def registered_between(fake: FakeSupervisor, start: float, end: float | None = None) -> bool:
    return any(r.at > start and (end is None or r.at < end) and r.answer == 200
               for r in fake.received(REGISTER))


# -- 1. malformed and hostile input --------------------------------------------------------

# (case, contents of the envelope or a raw body, token that gets an exception, its message
#  or the log line when no token is known)
MALFORMED = [
    ("broken JSON", b'{"envelope": "message", "contents": [{"specification": ', None,
     "specification poll answered with non-JSON"),
    ("contents not a list", b'{"envelope": "message", "version": 1, "contents": {"a": 1}}',
     None, "specification envelope without a contents list"),
    ("statement not an object", [42], None, "a message must be a JSON object"),
    ("unknown kind", [{"frobnicate": "measure", "version": 1, "label": "ping-average-ip4-0",
                       "token": "t-kind"}],
     "t-kind", "malformed message: not an mPlane statement"),
    ("unknown verb", [{**ping("t-verb"), "specification": "explode"}], "t-verb",
     "malformed message: unknown verb 'explode'"),
    ("parameters not an object", [{**ping("t-params"), "parameters": "all"}], "t-params",
     "malformed message: parameters must be an object"),
    ("unknown capability", [specification("teleport-ip4-0", "t-cap", TARGET, VALID_WHEN)],
     "t-cap", "no capability 'teleport-ip4-0' on this probe"),
    ("bad parameter value", [ping("t-value", **{"destination.ip4": "999.1.1.1"})], "t-value",
     "destination.ip4: '999.1.1.1' is not a valid address"),
    ("missing parameter", [specification("ping-average-ip4-0", "t-missing",
                                         {"destination.ip4": "127.0.0.1"}, VALID_WHEN)],
     "t-missing", "missing parameter source.ip4"),
    ("unknown parameter", [ping("t-extra", **{"hops.ip": "3"})], "t-extra",
     "unknown parameters: hops.ip"),
    ("when outside the capability (over before it arrives)",
     [ping("t-past", when="2020-01-01 00:00:00 ... 2020-01-01 00:00:05 / 1s")], "t-past",
     "is not within 'now ... future / 1s'"),
    ("when malformed", [ping("t-when", when="now + 3x / 1s")], "t-when",
     "when: '3x' is not an mPlane duration"),
    ("when longer than any date", [ping("t-huge", when="now + 99999999999d / 1s")], "t-huge",
     "is longer than any date can express"),
]


@pytest.mark.slow
def test_malformed_input_gets_exceptions_and_the_daemon_keeps_serving(fake, daemon):
    after = []
    for number, (case, payload, token, expected) in enumerate(MALFORMED):
        if isinstance(payload, bytes):
            fake.hand_out(payload)
        else:
            fake.hand_out(*payload)
        # Handed out on the next poll, after the hostile one: its receipt proves the daemon
        # went through the hostile input and is still polling.
        after.append(f"after-{number}")
        accepted(fake, after[-1])
        if token is None:
            assert expected in daemon.log(), case
        else:
            exceptions = fake.of(token, "exception")
            assert len(exceptions) == 1, (case, fake.messages())
            assert expected in exceptions[0]["message"], (case, exceptions[0])
    assert_measured(fake, after)
    for case, _, token, _ in MALFORMED:
        if token is not None:
            assert not fake.of(token, "receipt") and not fake.of(token, "result"), case
    assert alive(daemon)
    assert "Traceback" not in daemon.log()


def test_tokens_never_name_files(tmp_path, fake, daemon):
    tokens = ["../../escaped", "a/b/c", "\u00e9t\u00e9 \u2603"]
    fake.hand_out(*(ping(token) for token in tokens))
    for token in tokens:
        fake.wait_one(token, "receipt")
    jobs = tmp_path / "probe-state" / "jobs"
    assert len(list(jobs.glob("*.json"))) == 3
    assert not (tmp_path / "escaped.json").exists()
    assert_measured(fake, tokens)
    assert not list(jobs.iterdir())
    assert alive(daemon)


def test_receipt_always_precedes_the_outcome_of_a_quick_job(fake, daemon):
    # Singleton scopes: one echo, done within a millisecond of being accepted; or a source
    # address the probe lacks: the job fails at once.
    quick = [f"quick-{n}" for n in range(8)]
    failing = [f"failing-{n}" for n in range(8)]
    fake.hand_out(*(ping(token, when="now") for token in quick),
                  *(ping(token, when="now", **{"source.ip4": "192.0.2.7"}) for token in failing))
    fake.wait(lambda: all(fake.of(t, "result") for t in quick)
              and all(fake.of(t, "exception") for t in failing), what="every outcome")
    order = [(token_of(m), next(k for k in ("receipt", "result", "exception") if k in m))
             for m in fake.messages()]
    for token in quick + failing:
        outcome = "result" if token in quick else "exception"
        assert order.index((token, "receipt")) < order.index((token, outcome)), order
    assert "192.0.2.7 is not an address of this host" in fake.of("failing-0", "exception")[0][
        "message"]


@pytest.mark.slow
def test_oversized_bodies_are_abandoned_and_polling_goes_on(fake, daemon):
    hostile(fake, POLL, "oversized")
    accepted(fake, "after-sized")
    hostile(fake, POLL, "oversized-unsized")
    accepted(fake, "after-unsized")
    log = daemon.log()
    assert "supervisor sent 5242880 bytes (limit 4194304)" in log
    assert "supervisor sent more than 4194304 bytes" in log
    assert_measured(fake, ["after-sized", "after-unsized"])
    assert alive(daemon)


@pytest.mark.slow
@pytest.mark.parametrize("behaviour", ["trickle", "silent"])
def test_slow_supervisor_is_bounded_by_the_timeout(fake, daemon, behaviour):
    (slow,) = hostile(fake, POLL, behaviour)
    # The daemon gives up after [mplane] timeout, backs off (under a second after a success)
    # and registers again; the double would hold on for a minute.
    again = fake.wait(lambda: [r for r in fake.received() if r.at > slow.at])[0]
    assert TIMEOUT - 0.5 <= again.at - slow.at <= TIMEOUT + 1 + 5, again.at - slow.at
    assert again.kind == REGISTER
    # Whichever fires first: the socket's timeout or the request's deadline.
    assert re.search(r"supervisor unreachable \((supervisor too slow: request deadline passed"
                     r"|127\.0\.0\.1:\d+: timed out)\)", daemon.log())
    accepted(fake, "after-slow")
    assert_measured(fake, ["after-slow"])


@pytest.mark.slow
def test_http_errors_and_resets_back_off_then_recover(fake, daemon):
    since = time.monotonic()
    fake.misbehave(REGISTER, 500)
    hostile(fake, POLL, 500, "reset")
    failures = [r for r in fake.received() if r.scripted and r.at >= since]
    # Each failure marks the link down: register again (refused once), then poll.
    assert [(r.kind, r.answer) for r in failures] == [(POLL, 500), (REGISTER, 500),
                                                      (POLL, "reset")]
    # Backoff with jitter, growing: at least 0.5 s, then at least 1 s (the double answers at
    # once, so a shorter gap would be a retry loop).
    assert gaps(failures)[0] >= 0.45 and gaps(failures)[1] >= 0.95, gaps(failures)
    assert registered_between(fake, failures[1].at, failures[2].at)
    assert registered_between(fake, failures[2].at)

    # Delivery too: the receipt meets a reset and a 500, then goes through once.
    since = time.monotonic()
    fake.misbehave(RESULT, "reset", 500)
    accepted(fake, "after-errors")
    attempts = [r for r in fake.received(RESULT) if r.at > since]
    assert [r.answer for r in attempts[:3]] == ["reset", 500, 200], attempts
    assert all(r.message().get("receipt") and r.message()["token"] == "after-errors"
               for r in attempts[:3])
    assert gaps(attempts[:3])[0] >= 0.45
    assert_measured(fake, ["after-errors"])
    assert alive(daemon)


# -- 2. interrupts ---------------------------------------------------------------------------

@pytest.mark.slow
def test_interrupt_delivers_the_rows_so_far(fake, daemon):
    spec = ping("open", when="now ... future / 1s", label="ping-detail-ip4")
    fake.hand_out(spec)
    fake.wait_one("open", "receipt")
    time.sleep(2.5)
    sent = time.monotonic()
    fake.hand_out(interrupt(spec))
    result = fake.wait_one("open", "result", timeout=10)
    assert time.monotonic() - sent < 5
    assert result["results"] == ["time", "delay.twoway.icmp.us"]
    rows = result["resultvalues"]
    assert len(rows) >= 2, result
    assert all(int(delay) > 0 for _, delay in rows)
    start, end = result["when"].split(" ... ")
    assert start < end
    assert len(fake.of("open", "result")) == 1 and not fake.of("open", "exception")

    fake.hand_out(interrupt(ping("nobody-runs-this")))
    exception = fake.wait_one("nobody-runs-this", "exception")
    assert exception["message"] == "Unknown job"
    # Interrupting a job that has ended is the same.
    fake.hand_out(interrupt(spec))
    ended = fake.wait(lambda: fake.of("open", "exception"), what="Unknown job for an ended job")
    assert ended[0]["message"] == "Unknown job"
    assert alive(daemon)


# -- 3. delivery and spool -------------------------------------------------------------------

@pytest.mark.slow
def test_refused_results_are_kept_then_delivered_exactly_once(fake, daemon):
    fake.result_status = lambda message: 503
    tokens = ["kept-1", "kept-2", "kept-3"]
    fake.hand_out(*(ping(token) for token in tokens))
    daemon.wait_log(r"job kept-\d \(ping-average-ip4-0\): 1 result rows", count=3, timeout=20)
    assert fake.wait(lambda: len([r for r in fake.received(RESULT) if r.answer == 503]) >= 3)
    assert not fake.messages()
    assert len(list(daemon.spool_dir.glob("*.msg"))) == 6
    fake.result_status = lambda message: 200
    assert_measured(fake, tokens)
    time.sleep(1)  # nothing more arrives
    assert len(fake.messages()) == 6
    # Oldest first: the receipts, then the results as the jobs ended.
    order = [(m["token"], "receipt" in m) for m in fake.messages()]
    assert order[:3] == [(t, True) for t in tokens]
    assert sorted(order[3:]) == [(t, False) for t in tokens]
    assert not list(daemon.spool_dir.glob("*.msg"))


@pytest.mark.slow
def test_result_refused_as_malformed_is_dropped_the_rest_delivered(fake, daemon):
    fake.result_status = lambda m: 400 if "result" in m and m["token"] == "bad" else 200
    tokens = ["good-1", "bad", "good-2"]
    fake.hand_out(*(ping(token) for token in tokens))
    assert_measured(fake, ["good-1", "good-2"])
    daemon.wait_log(r"supervisor refused message \d+ \(HTTP 400")
    time.sleep(1)
    refused = [r for r in fake.received(RESULT) if r.answer == 400]
    assert len(refused) == 1 and refused[0].message()["token"] == "bad"  # never resent
    assert len(fake.of("bad", "receipt")) == 1 and not fake.of("bad", "result")
    assert not list(daemon.spool_dir.glob("*.msg"))


def test_full_spool_drops_the_oldest_and_says_how_many(tmp_path, fake):
    fake.result_status = lambda message: "reset"  # away for results, still handing out
    with running(tmp_path, fake, spool_max_messages="3") as daemon:
        tokens = [f"spooled-{n}" for n in range(1, 6)]
        # Unknown capabilities: an exception each, at once.
        fake.hand_out(*(specification("teleport-0", t, TARGET, VALID_WHEN) for t in tokens))
        daemon.wait_log("2 in all since start")
        assert daemon.log().count("dropped the 1 oldest undelivered messages") == 2
        fake.result_status = lambda message: 200
        fake.wait(lambda: fake.of("spooled-5", "exception"))
        time.sleep(0.5)
        assert [m["exception"] for m in fake.messages()] == tokens[2:]


# -- 4. signals ------------------------------------------------------------------------------

def open_ended(fake: FakeSupervisor, daemon: ProbeDaemon, token: str) -> None:
    fake.hand_out(ping(token, when="now ... future / 1s", label="ping-detail-ip4"))
    fake.wait_one(token, "receipt")
    time.sleep(1.5)


def wait_exit(daemon: ProbeDaemon, timeout: float) -> int:
    assert daemon.process is not None
    try:
        return daemon.process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {timeout} s after SIGTERM:\n"
                             f"{daemon.log()[-2000:]}") from None


@pytest.mark.slow
def test_sigterm_interrupts_the_job_and_delivers_its_result(fake, daemon):
    open_ended(fake, daemon, "running")
    daemon.signal(signal.SIGTERM)
    assert wait_exit(daemon, STOP_GRACE) == 0
    result = fake.wait_one("running", "result", timeout=1)
    assert len(result["resultvalues"]) >= 1
    assert not list(daemon.spool_dir.glob("*.msg"))
    assert daemon.log().rstrip().endswith("stopped")


@pytest.mark.slow
def test_sigterm_with_the_supervisor_away_keeps_the_result_in_the_spool(tmp_path, fake, daemon):
    open_ended(fake, daemon, "stranded")
    fake.close()
    daemon.signal(signal.SIGTERM)
    assert wait_exit(daemon, STOP_GRACE) == 0
    spooled = [json.loads(p.read_bytes()) for p in sorted(daemon.spool_dir.glob("*.msg"))]
    assert [m for m in spooled if m.get("result") and m["token"] == "stranded"], spooled
    # Not mistaken at the next start for a job cut short.
    assert not list((tmp_path / "probe-state" / "jobs").iterdir())


@pytest.mark.slow
def test_sighup_reload_withdraws_and_reregisters_and_refuses_broken_configs(fake, tmp_path):
    with_dns = {**ONLY_PING, "dns": {"enabled": "yes"}}
    with running(tmp_path, fake, sections=with_dns) as daemon:
        first = fake.registrations()[0]
        pings = [label for label in first if label.startswith("ping-")]
        assert "ping-detail-ip4" in pings and any(x.startswith("dns-") for x in first)
        capabilities = {c["label"]: c["token"] for c in
                        fake.received(REGISTER)[0].message()["contents"]}

        broken = [
            ("syntax", lambda: daemon.config_path.write_text("[mplane\nbroken\n")),
            ("bad option", lambda: daemon.write_config(
                {**with_dns, "ping": {"timeout_ms": "soon"}}, {"timeout": str(TIMEOUT)})),
            ("missing TLS files", lambda: daemon.write_config(with_dns, {
                "timeout": str(TIMEOUT), "tls": "yes", "ca_file": str(tmp_path / "no-ca.pem"),
                "cert_file": str(tmp_path / "no.crt"), "key_file": str(tmp_path / "no.key")})),
        ]
        registrations = len(fake.received(REGISTER))
        for count, (case, write) in enumerate(broken, start=1):
            write()
            daemon.signal(signal.SIGHUP)
            daemon.wait_log("reload refused, keeping the running configuration", count=count)
            assert alive(daemon), case
        accepted(fake, "old-config")
        assert len(fake.received(REGISTER)) == registrations  # nothing was re-offered
        assert not [m for m in fake.messages() if "withdrawal" in m]

        daemon.write_config({**with_dns, "ping": {"enabled": "no"}}, {"timeout": str(TIMEOUT)})
        daemon.signal(signal.SIGHUP)
        withdrawn = fake.wait(lambda: counted([m for m in fake.messages() if "withdrawal" in m],
                                              len(pings)), what="ping withdrawals")
        assert len(withdrawn) == len(pings)
        assert {m["label"]: m["token"] for m in withdrawn} == {
            label: capabilities[label] for label in pings}
        again = fake.wait(lambda: counted(fake.registrations(), registrations + 1),
                          what="a re-registration")
        assert again[-1] == [label for label in first if label not in pings]
        assert_measured(fake, ["old-config"])
        fake.hand_out(ping("after-reload"))
        assert "no capability" in fake.wait_one("after-reload", "exception")["message"]


@pytest.mark.slow
def test_kill_9_then_restart_reports_the_cut_job_and_delivers_the_spool(fake, tmp_path):
    with running(tmp_path, fake) as daemon:
        fake.result_status = lambda message: 503  # nothing gets through before the kill
        fake.hand_out(ping("finished", when="now"))
        daemon.wait_log(r"job finished \(ping-average-ip4-0\): 1 result rows")
        fake.hand_out(ping("cut", when="now ... future / 1s", label="ping-detail-ip4"))
        daemon.wait_log("accepted ping-detail-ip4-0 [(]token cut")
        assert daemon.process is not None
        daemon.process.kill()
        daemon.process.wait()
        assert not fake.messages()
        assert len(list(daemon.spool_dir.glob("*.msg"))) == 3  # 2 receipts, 1 result
        fake.result_status = lambda message: 200
        daemon.start()
        exception = fake.wait_one("cut", "exception")
        assert "the probe daemon restarted during this measurement" in exception["message"]
        time.sleep(0.5)
        delivered = [(m.get("token") or m.get("exception"),
                      next(k for k in ("receipt", "result", "exception") if k in m))
                     for m in fake.messages()]
        assert delivered == [("finished", "receipt"), ("finished", "result"),
                             ("cut", "receipt"), ("cut", "exception")]
        assert not list(daemon.spool_dir.glob("*.msg"))


# -- 5. probe-daemon --check and --print-registry --------------------------------------------

PASSPHRASE = b"probe-daemon-check-test"


def pki_request() -> dict:
    return {
        "deployment": "check-test", "domains": ["check-test.internal"],
        "networks": ["127.0.0.0/8"], "group_profiles": {"probes": "probe"},
        "mplane_roles": {}, "authorizations": {},
        "hosts": [{"name": name, "groups": ["probes"], "address": "127.0.0.1"}
                  for name in ("probe-01", "probe-02")],
    }


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("pki")
    current, old = PKIState(work / "current"), PKIState(work / "old")
    sync(current, Deployment.from_request(pki_request()), PASSPHRASE)
    sync(old, Deployment.from_request(pki_request()), PASSPHRASE,
         now=datetime.now(UTC) - timedelta(days=100))
    return {"probe-01": current.hosts_dir / "probe-01", "probe-02": current.hosts_dir / "probe-02",
            "expired": old.hosts_dir / "probe-01"}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_check(work: Path, bundle: Path, *, key: Path | None = None, cert: Path | None = None,
              spool: Path | None = None, extra: str = "") -> subprocess.CompletedProcess[str]:
    config = work / "check.conf"
    config.write_text(
        f"[mplane]\nsupervisor_url = https://127.0.0.1:{closed_port()}/\ntls = yes\n"
        f"ca_file = {bundle / 'chain.pem'}\ncert_file = {cert or bundle / 'cert.pem'}\n"
        f"key_file = {key or bundle / 'key.pem'}\ntimeout = 2\n{extra}"
        f"[daemon]\nspool_dir = {spool or work / 'spool'}\n"
        + "".join(f"[{name}]\nenabled = no\n" for name in OTHERS))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "probe_daemon", "--config", str(config),
                           "--check"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=60)


def errors(run: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in run.stdout.splitlines() if line.startswith("error: ")]


def test_check_passes_a_good_configuration(tmp_path, bundles):
    run = run_check(tmp_path, bundles["probe-01"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert not errors(run)
    assert re.search(r"^ok: \d+ capabilities \(ping-average-ip4, ", run.stdout, re.M), run.stdout
    # Not fatal: the daemon waits for its supervisor.
    assert "warning: supervisor not reachable now" in run.stdout


def test_check_names_each_problem_with_its_fix(tmp_path, bundles):
    probe = bundles["probe-01"]
    missing = run_check(tmp_path, probe, key=probe / "gone.pem")
    assert missing.returncode == 1
    assert errors(missing) == [f"error: [mplane] key_file = {probe / 'gone.pem'}: no such file; "
                               "deploy the host's bundle from the PKI (playbooks/pki.yml) there"]

    loose = tmp_path / "loose.key"
    shutil.copy(probe / "key.pem", loose)
    loose.chmod(0o644)
    mode = run_check(tmp_path, probe, key=loose)
    assert mode.returncode == 1
    assert errors(mode) == [f"error: {loose} is mode 0644; the private key must be 0600: "
                            f"chmod 600 {loose}"]

    other = bundles["probe-02"] / "key.pem"
    mismatch = run_check(tmp_path, probe, key=other)
    assert mismatch.returncode == 1
    (line,) = errors(mismatch)
    assert "KEY_VALUES_MISMATCH" in line
    assert f"check that {probe / 'cert.pem'} and {other} are the same host's pair" in line

    expired = run_check(tmp_path, bundles["expired"])
    assert expired.returncode == 1
    (line,) = errors(expired)
    assert line.startswith(f"error: {bundles['expired'] / 'cert.pem'} expired on ")
    assert line.endswith(": re-run playbooks/pki.yml and redeploy the host")

    regular = tmp_path / "a-file"
    regular.write_text("")
    spool = run_check(tmp_path, probe, spool=regular / "spool")
    assert spool.returncode == 1
    assert errors(spool) == [f"error: [daemon] spool_dir = {regular / 'spool'}: not writable "
                             "(Not a directory)"]

    old_loose = tmp_path / "old-loose.key"
    shutil.copy(bundles["expired"] / "key.pem", old_loose)
    old_loose.chmod(0o644)
    several = run_check(tmp_path, bundles["expired"], key=old_loose, spool=regular / "spool")
    assert several.returncode == 1
    assert len(errors(several)) == 3, several.stdout
    assert "ok:" not in several.stdout


def test_check_refuses_an_unknown_setting_in_one_line(tmp_path, bundles):
    run = run_check(tmp_path, bundles["probe-01"], extra="supervisor = https://x/\n")
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        f"probe-daemon: error: {tmp_path / 'check.conf'}: [mplane] supervisor is not a setting "
        "(probe-daemon --help lists them)"]


def test_print_registry_declares_every_element_of_every_measurement():
    run = subprocess.run([sys.executable, "-m", "probe_daemon", "--print-registry"], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=60)
    registry = json.loads(run.stdout)
    elements = {e["name"]: (e["prim"], e["desc"]) for e in registry["elements"]}
    assert len(elements) == len(registry["elements"])
    declared = 0
    for target in MEASUREMENT_MODULES.values():
        module = importlib.import_module(target.split(":")[0])
        for name, entry in getattr(module, "ELEMENTS", {}).items():
            assert elements.get(name) == tuple(entry), (module.__name__, name)
            declared += 1
    assert declared > 0
