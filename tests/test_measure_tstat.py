# SPDX-License-Identifier: Apache-2.0
"""The Tstat measurement against a copy of a realistic runtime.conf, without Tstat itself.

A real Tstat build (and a test of tstat picking the edits up) comes with the Tstat packaging
issue; Tstat is not in Debian. Here a fake ``tstat`` on PATH serves only the availability
check, and ``tstat_reads`` re-implements Tstat's ini reader (tstat/inireader.c) to check that
every file written is one Tstat would accept, with the values Tstat would see.
"""

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from probe_daemon.measurements.base import REGISTRY_PROBEFORGE, Job, MeasurementError
from probe_daemon.measurements.tstat import ELEMENTS, OPTIONS, TstatMeasurement
from probe_daemon.model import REGISTRY_CORE
from probe_daemon.when import format_time
from tests.conftest import REPO
from tests.support import jobs

FIXTURE = REPO / "tests" / "fixtures" / "tstat" / "runtime.conf"
ORIGINAL = FIXTURE.read_bytes()
CORE = "tstat-log_tcp_complete-core"
E2E = "tstat-log_tcp_complete-end_to_end"
HTTP = "tstat-log_http_complete"
# Elements of the mPlane core registry our results use.
CORE_ELEMENTS = {"start", "end"}


def tstat_reads(data: bytes) -> dict[str, int]:
    """The settings Tstat's ini reader takes from a runtime.conf, as "section.key".

    It raises where Tstat would exit: values must be digit words, "=" words are skipped, a
    word starting with "#" ends the line, a key without a value means 1.
    """
    values: dict[str, int] = {}
    section = None
    for number, line in enumerate(data.split(b"\n"), 1):
        name: str | None = None
        value: int | None = None
        for word in re.split(rb"[ \t]+", line):
            if not word:
                continue
            if word.startswith(b"#"):
                break
            if word.startswith(b"["):
                assert word.lower() in (b"[log]", b"[options]", b"[dump]"), \
                    f"line {number}: tstat exits on section {word!r}"
                section = word.lower().strip(b"[]").decode()
                break
            if word.startswith(b"="):
                continue
            if name is None:
                name = word.decode()
            elif value is None:
                assert word.isdigit(), f"line {number}: tstat exits on {word!r}"
                value = int(word)
            else:
                raise AssertionError(f"line {number}: tstat exits on {word!r}")
        if section and name:
            values[f"{section}.{name}"] = 1 if value is None else value
    return values


def only_changes(before: bytes, after: bytes) -> dict[int, tuple[bytes, bytes]]:
    """Lines that differ, by number; the files must have the same number of lines."""
    old, new = before.split(b"\n"), after.split(b"\n")
    assert len(old) == len(new)
    return {i + 1: (a, b) for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b}


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def make_job(label: str, when: str = "now ... future") -> Job:
    return jobs.make_job(label, when)


class Running:
    """A job running in its own thread, as the daemon's job runner runs it."""

    def __init__(self, measurement: TstatMeasurement, label: str,
                 when: str = "now ... future") -> None:
        self.job = make_job(label, when)
        self.rows: list[Mapping[str, Any]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(measurement,), daemon=True)
        self.thread.start()

    def _run(self, measurement: TstatMeasurement) -> None:
        try:
            self.rows.extend(measurement.run(self.job))
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def stop(self) -> list[Mapping[str, Any]]:
        self.job.stop.set()
        return self.join()

    def join(self, timeout: float = 5.0) -> list[Mapping[str, Any]]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the job did not end"
        if self.error is not None:
            raise self.error
        return self.rows


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "tstat" / "runtime.conf"
    path.parent.mkdir(parents=True)
    shutil.copyfile(FIXTURE, path)
    return path


@pytest.fixture
def options(tmp_path: Path, conf: Path) -> dict[str, str]:
    return {"binary": "tstat", "runtime_conf": str(conf), "log_dir": str(tmp_path / "log"),
            "rrd_dir": str(tmp_path / "rrd"),
            "state_file": str(tmp_path / "state" / "tstat-state.json")}


@pytest.fixture
def tstat(options: dict[str, str]) -> TstatMeasurement:
    return TstatMeasurement(options)


def setting(conf: Path, key: str) -> int:
    return tstat_reads(conf.read_bytes())[key]


# -- what is offered --------------------------------------------------------------------------

def test_capabilities_are_the_proxy_names_and_declare_their_elements(tstat):
    templates = {t.label: t for t in tstat.capabilities()}
    assert list(templates) == [
        "tstat-log_tcp_complete-core", "tstat-log_tcp_complete-end_to_end",
        "tstat-log_tcp_complete-tcp_options", "tstat-log_tcp_complete-p2p_stats",
        "tstat-log_tcp_complete-layer7", "tstat-log_http_complete", "tstat-log_rrds",
        "tstat-exporter_log"]
    for template in templates.values():
        assert template.when == "now ... future"
        # One parameter, so that the mPlane RI client (which refuses to specify a capability
        # without parameters) can run it.
        assert template.parameters == {"observer.interface": "*"}
        assert template.registry == REGISTRY_PROBEFORGE != REGISTRY_CORE
        assert set(template.results) - CORE_ELEMENTS <= set(ELEMENTS)
        assert template.metadata["System_type"] == "tStat"
    assert "tstat.log.class" in templates[CORE].results
    assert "tstat.log.class" not in templates["tstat-exporter_log"].results
    assert set(OPTIONS) == {"binary", "runtime_conf", "log_dir", "rrd_dir", "state_file",
                            "interface"}


def test_offered_only_where_tstat_and_its_runtime_conf_exist(tmp_path, options, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    reason = TstatMeasurement(options).unavailable()
    assert reason and "Tstat is not installed" in reason and "binary" in reason

    fake = empty / "tstat"  # stands in for the real build only for this check
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    assert TstatMeasurement(options).unavailable() is None

    missing = {**options, "runtime_conf": str(tmp_path / "nowhere" / "runtime.conf")}
    reason = TstatMeasurement(missing).unavailable()
    assert reason and "runtime_conf" in reason and "-T" in reason

    not_executable = tmp_path / "tstat.txt"
    not_executable.write_text("")
    reason = TstatMeasurement({**options, "binary": str(not_executable)}).unavailable()
    assert reason and str(not_executable) in reason


# -- switching on and off -----------------------------------------------------------------------

def test_window_switches_one_value_and_restores_every_byte_on_interrupt(tstat, conf, options):
    assert tstat_reads(ORIGINAL)["log.log_tcp_complete"] == 0
    running = Running(tstat, CORE)
    wait_for(lambda: setting(conf, "log.log_tcp_complete") == 1)
    switched = conf.read_bytes()
    # One value on one line changed; the commented-out line and [dump] tcp_complete did not.
    assert only_changes(ORIGINAL, switched) == {
        14: (b"log_tcp_complete = 0            # TCP flows closed properly (FIN/RST)",
             b"log_tcp_complete = 1            # TCP flows closed properly (FIN/RST)")}
    expected = {**tstat_reads(ORIGINAL), "log.log_tcp_complete": 1}
    assert tstat_reads(switched) == expected
    assert Path(options["state_file"]).is_file()

    [row] = running.stop()
    assert conf.read_bytes() == ORIGINAL
    assert not Path(options["state_file"]).exists()
    assert row["tstat.log.class"] == "log_tcp_complete"
    assert row["tstat.log.path"] == options["log_dir"]
    assert row["tstat.log.files"] == 0 and row["tstat.log.names"] == ""
    assert row["start"] <= row["end"]


def test_column_sets_switch_log_tcp_complete_too_in_one_replace(tstat, conf):
    running = Running(tstat, E2E)
    wait_for(lambda: setting(conf, "options.tcplog_end_to_end") == 1)
    changed = only_changes(ORIGINAL, conf.read_bytes())
    assert sorted(changed) == [14, 30]
    assert changed[30][1] == b"tcplog_end_to_end = 1\t\t# RTT and TTL columns"
    assert setting(conf, "log.log_tcp_complete") == 1
    [row] = running.stop()
    assert row["tstat.log.class"] == "log_tcp_complete,tcplog_end_to_end"
    assert conf.read_bytes() == ORIGINAL


def test_replacement_is_atomic_keeps_mode_and_owner_and_leaves_no_temp_files(tstat, conf):
    conf.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(conf, 65534, 65534)
    before = conf.stat()
    # Held open, the original inode cannot be freed and reused by a later file.
    original = os.open(conf, os.O_RDONLY)
    switched = ORIGINAL.replace(b"log_tcp_complete = 0 ", b"log_tcp_complete = 1 ")
    seen: set[bytes] = set()
    done = threading.Event()

    def reader() -> None:
        # What tstat could read at any moment: the whole old file or the whole new one.
        while not done.is_set():
            seen.add(conf.read_bytes())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for _ in range(40):
            tstat._acquire(("log_tcp_complete",))
            tstat._release(("log_tcp_complete",))
    finally:
        done.set()
        thread.join()
    assert seen <= {ORIGINAL, switched} and seen
    tstat._acquire(("log_tcp_complete",))
    after = conf.stat()
    # Renamed over, not rewritten in place: the original file is unlinked and unchanged.
    assert after.st_ino != before.st_ino
    assert os.fstat(original).st_nlink == 0
    assert os.pread(original, len(ORIGINAL) + 1, 0) == ORIGINAL
    os.close(original)
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert os.listdir(conf.parent) == ["runtime.conf"]
    tstat._release(("log_tcp_complete",))
    assert conf.read_bytes() == ORIGINAL


def test_overlapping_windows_are_counted_and_classes_are_independent(tstat, conf, options):
    core_a = Running(tstat, CORE)
    wait_for(lambda: setting(conf, "log.log_tcp_complete") == 1)
    core_b = Running(tstat, CORE)
    e2e = Running(tstat, E2E, "now + 1s")
    http = Running(tstat, HTTP)
    wait_for(lambda: setting(conf, "options.tcplog_end_to_end") == 1
             and setting(conf, "log.log_http_complete") == 1)

    e2e.join()  # its window ends by itself: its column set goes, log_tcp_complete stays
    assert setting(conf, "options.tcplog_end_to_end") == 0
    assert setting(conf, "log.log_tcp_complete") == 1
    assert setting(conf, "log.log_http_complete") == 1

    http.stop()
    assert setting(conf, "log.log_http_complete") == 0
    assert setting(conf, "log.log_tcp_complete") == 1

    core_a.stop()
    assert setting(conf, "log.log_tcp_complete") == 1  # core_b still wants it
    core_b.stop()
    assert conf.read_bytes() == ORIGINAL
    assert not Path(options["state_file"]).exists()


def test_timed_window_ends_by_itself(tstat, conf):
    began = time.monotonic()
    running = Running(tstat, HTTP, "now + 2s")
    wait_for(lambda: setting(conf, "log.log_http_complete") == 1)
    [row] = running.join(timeout=4)
    assert 2.0 <= time.monotonic() - began < 3.5
    assert timedelta(seconds=1.9) <= row["end"] - row["start"] < timedelta(seconds=3)
    assert conf.read_bytes() == ORIGINAL


def test_a_value_already_on_is_left_alone_and_kept_on(tstat, conf):
    already_on = ORIGINAL.replace(b"log_http_complete = 0", b"log_http_complete = 1")
    conf.write_bytes(already_on)
    inode = conf.stat().st_ino
    running = Running(tstat, HTTP)
    time.sleep(0.2)
    running.stop()
    # No rewrite at all: tstat sees no mtime change, so no reload and no new output directory.
    assert conf.stat().st_ino == inode
    assert conf.read_bytes() == already_on


def test_a_symlinked_runtime_conf_is_edited_where_it_points(tmp_path, conf, options):
    link = tmp_path / "runtime.conf"
    link.symlink_to(conf)
    tstat = TstatMeasurement({**options, "runtime_conf": str(link)})
    running = Running(tstat, CORE)
    wait_for(lambda: setting(conf, "log.log_tcp_complete") == 1)
    assert link.is_symlink()
    running.stop()
    assert link.is_symlink() and conf.read_bytes() == ORIGINAL


def test_window_in_the_future_interrupted_before_it_starts_touches_nothing(tstat, conf):
    start = datetime.now(UTC) + timedelta(hours=1)
    running = Running(tstat, CORE, f"{format_time(start)} ... "
                                   f"{format_time(start + timedelta(hours=1))}")
    time.sleep(0.1)
    assert running.stop() == []
    assert conf.read_bytes() == ORIGINAL


def test_a_window_is_required(tstat):
    with pytest.raises(MeasurementError, match="needs a time window"):
        list(tstat.run(make_job(CORE, "now")))


# -- results ----------------------------------------------------------------------------------

def test_result_names_the_files_of_that_class_that_appeared_or_grew(tstat, conf, tmp_path):
    log_dir = tmp_path / "log"
    old = log_dir / "2026_11_22_00_00.out"
    old.mkdir(parents=True)
    (old / "log_tcp_complete").write_bytes(b"x" * 100)
    (old / "log_http_complete").write_bytes(b"x" * 50)
    (old / "log_udp_complete").write_bytes(b"x" * 10)
    running = Running(tstat, CORE)
    wait_for(lambda: setting(conf, "log.log_tcp_complete") == 1)
    with (old / "log_tcp_complete").open("ab") as out:
        out.write(b"y" * 20)
    with (old / "log_http_complete").open("ab") as out:  # another class's log
        out.write(b"y" * 20)
    new = log_dir / "2026_11_22_01_00.out"  # tstat opens a new directory on reload
    new.mkdir()
    (new / "log_tcp_complete.gz").write_bytes(b"z" * 30)
    (new / "log_udp_complete").write_bytes(b"z" * 5)
    [row] = running.stop()
    assert row["tstat.log.names"] == ("2026_11_22_00_00.out/log_tcp_complete,"
                                      "2026_11_22_01_00.out/log_tcp_complete.gz")
    assert row["tstat.log.files"] == 2
    assert row["tstat.log.bytes"] == 50


def test_exporter_log_reports_every_file_written_and_leaves_runtime_conf_alone(
        tstat, conf, tmp_path):
    inode = conf.stat().st_ino
    running = Running(tstat, "tstat-exporter_log")
    time.sleep(0.1)
    out = tmp_path / "log" / "2026_11_22_01_00.out"
    out.mkdir(parents=True)
    (out / "log_tcp_complete").write_bytes(b"a" * 7)
    (out / "log_dns_complete").write_bytes(b"b" * 3)
    [row] = running.stop()
    assert "tstat.log.class" not in row
    assert row["tstat.log.files"] == 2 and row["tstat.log.bytes"] == 10
    assert conf.stat().st_ino == inode and conf.read_bytes() == ORIGINAL


def test_log_rrds_switches_the_rrd_engine_and_reports_the_rrd_directory(tstat, conf, tmp_path):
    rrd = tmp_path / "rrd"
    rrd.mkdir()
    (rrd / "ip_bitrate.in.rrd").write_bytes(b"r" * 64)
    running = Running(tstat, "tstat-log_rrds")
    wait_for(lambda: setting(conf, "log.rrd_engine") == 1)
    time.sleep(0.02)
    (rrd / "ip_bitrate.in.rrd").write_bytes(b"s" * 64)  # RRDs change in place, same size
    [row] = running.stop()
    assert row["tstat.log.path"] == str(rrd)
    assert row["tstat.log.names"] == "ip_bitrate.in.rrd"
    assert row["tstat.log.bytes"] == 0
    assert conf.read_bytes() == ORIGINAL


# -- crash safety -------------------------------------------------------------------------------

def test_recover_after_the_daemon_was_killed_with_a_class_switched_on(options, conf):
    script = textwrap.dedent(f"""
        import threading
        from datetime import UTC, datetime
        from probe_daemon.measurements.base import Job
        from probe_daemon.measurements.tstat import TstatMeasurement
        from probe_daemon.when import When
        job = Job(label={E2E!r}, parameters={{}}, when=When.parse("now ... future"),
                  received=datetime.now(UTC), stop=threading.Event())
        list(TstatMeasurement({options!r}).run(job))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    daemon = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        wait_for(lambda: setting(conf, "options.tcplog_end_to_end") == 1, timeout=10)
    finally:
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
    assert setting(conf, "log.log_tcp_complete") == 1
    assert Path(options["state_file"]).is_file()

    restarted = TstatMeasurement(options)
    assert sorted(restarted.recover()) == ["log_tcp_complete = 0", "tcplog_end_to_end = 0"]
    assert conf.read_bytes() == ORIGINAL
    assert not Path(options["state_file"]).exists()
    assert restarted.recover() == []  # the daemon calls it once per capability


def test_a_job_recovers_first_so_a_stale_on_is_never_taken_for_the_original(options, conf):
    killed = TstatMeasurement(options)
    killed._acquire(("log_tcp_complete",))  # and never released: the daemon died here
    assert setting(conf, "log.log_tcp_complete") == 1

    restarted = TstatMeasurement(options)  # recover() not called
    running = Running(restarted, CORE, "now + 1s")
    running.join()
    assert conf.read_bytes() == ORIGINAL


def test_recover_never_raises_and_keeps_the_record_when_it_cannot_restore(options, conf):
    killed = TstatMeasurement(options)
    killed._acquire(("log_http_complete",))
    switched = conf.read_bytes()
    conf.write_bytes(switched.replace(b"log_http_complete = 1", b"log_http_complete=1"))
    restarted = TstatMeasurement(options)
    assert restarted.recover() == []
    assert Path(options["state_file"]).is_file()
    with pytest.raises(MeasurementError, match="log_http_complete = 0"):
        list(restarted.run(make_job(CORE, "now + 1s")))
    conf.write_bytes(switched)  # the operator fixes the line
    assert restarted.recover() == ["log_http_complete = 0"]
    assert conf.read_bytes() == ORIGINAL


# -- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "replacement", "reason"), [
    (b"log_tcp_complete = 0 ", b"log_tcp_complete=1 ", r"line 14 .* not in `key = 0\|1` form"),
    (b"log_tcp_complete = 0 ", b"log_tcp_complete = on ", r"not in `key = 0\|1` form"),
    (b"log_tcp_complete = 0 ", b"log_tcp_complete ", r"not in `key = 0\|1` form"),
    (b"log_tcp_complete = 0 ", b"#og_tcp_complete = 0 ", "add the line `log_tcp_complete = 0`"),
    (b"[options]\n", b"[options]\nlog_tcp_complete = 0\n[log]\nlog_tcp_complete = 0\n",
     "lines 14, 32; keep only one"),
])
def test_lines_it_cannot_edit_are_refused_naming_the_fix(tstat, conf, options, line,
                                                         replacement, reason):
    broken = ORIGINAL.replace(line, replacement, 1)
    conf.write_bytes(broken)
    with pytest.raises(MeasurementError, match=reason):
        list(tstat.run(make_job(CORE, "now + 1s")))
    assert conf.read_bytes() == broken
    assert not Path(options["state_file"]).exists()


def test_a_setting_in_the_wrong_section_is_not_taken(tstat, conf):
    moved = ORIGINAL.replace(b"tcplog_end_to_end = 0", b"#").replace(
        b"[log]\n", b"[log]\ntcplog_end_to_end = 0\n")
    conf.write_bytes(moved)
    with pytest.raises(MeasurementError, match=r"no tcplog_end_to_end setting in \[options\]"):
        list(tstat.run(make_job(E2E, "now + 1s")))
    assert conf.read_bytes() == moved


def test_nothing_is_switched_on_without_a_crash_record(conf, options, tmp_path):
    blocker = tmp_path / "not-a-directory"
    tstat = TstatMeasurement({**options, "state_file": str(blocker / "tstat-state.json")})
    assert tstat.recover() == []
    blocker.write_text("")  # root may write anywhere, but not below a file
    with pytest.raises(MeasurementError, match=r"cannot record .* state_file"):
        list(tstat.run(make_job(CORE, "now + 1s")))
    assert conf.read_bytes() == ORIGINAL


def _nobody_python() -> str | None:
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run([python, "-c", "import probe_daemon.measurements.tstat"],
                                   user=65534, group=65534, capture_output=True,
                                   env={"PYTHONPATH": str(REPO)}, cwd="/", timeout=30)
        except OSError:  # e.g. an interpreter below a directory only root may enter
            continue
        if probe.returncode == 0:
            return python
    return None


def test_unwritable_runtime_conf_is_refused_naming_the_fix(tmp_path):
    if os.geteuid() != 0:
        directory = tmp_path / "etc"
        directory.mkdir()
        shutil.copyfile(FIXTURE, directory / "runtime.conf")
        (directory / "runtime.conf").chmod(0o444)
        measurement = TstatMeasurement({"runtime_conf": str(directory / "runtime.conf"),
                                        "state_file": str(tmp_path / "state.json")})
        with pytest.raises(MeasurementError, match="not writable by the probe daemon"):
            list(measurement.run(make_job(CORE, "now + 1s")))
        return
    # Root may write anything: run the daemon's side as an unprivileged user instead.
    python = _nobody_python()
    if python is None:
        pytest.skip("no Python that user nobody can run with this checkout")
    directory = Path(tempfile.mkdtemp(prefix="tstat-ro-"))
    try:
        directory.chmod(0o755)
        shutil.copyfile(FIXTURE, directory / "runtime.conf")
        state = directory / "state"
        state.mkdir()
        os.chown(state, 65534, 65534)
        script = textwrap.dedent(f"""
            import threading
            from datetime import UTC, datetime
            from probe_daemon.measurements.base import Job, MeasurementError
            from probe_daemon.measurements.tstat import TstatMeasurement
            from probe_daemon.when import When
            job = Job(label={CORE!r}, parameters={{}}, when=When.parse("now + 1s"),
                      received=datetime.now(UTC), stop=threading.Event())
            m = TstatMeasurement({{"runtime_conf": {str(directory / "runtime.conf")!r},
                                  "state_file": {str(state / "tstat-state.json")!r}}})
            try:
                list(m.run(job))
            except MeasurementError as exc:
                print(exc)
        """)
        result = subprocess.run([python, "-c", script], user=65534, group=65534, cwd="/",
                                env={"PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, result.stderr
        assert "is not writable by the probe daemon (uid 65534)" in result.stdout
        assert "run the daemon as root" in result.stdout
        assert (directory / "runtime.conf").read_bytes() == ORIGINAL
        assert not (state / "tstat-state.json").exists()
    finally:
        shutil.rmtree(directory)


def test_a_failed_replace_switches_nothing_and_leaves_no_record(tstat, conf, options,
                                                                monkeypatch):
    import probe_daemon.measurements.tstat as module

    real = module.replace_atomically

    def failing(path: Path, data: bytes, like: os.stat_result | None = None) -> None:
        if path.name == "runtime.conf":
            raise OSError(28, "No space left on device")
        real(path, data, like)

    monkeypatch.setattr(module, "replace_atomically", failing)
    with pytest.raises(MeasurementError, match=r"cannot replace .*No space left"):
        list(tstat.run(make_job(CORE, "now + 1s")))
    assert conf.read_bytes() == ORIGINAL
    assert not Path(options["state_file"]).exists()
    assert tstat._refs == {} and tstat._originals == {}


def test_a_restore_that_fails_is_reported_and_retried(tstat, conf, options):
    running = Running(tstat, CORE)
    wait_for(lambda: setting(conf, "log.log_tcp_complete") == 1)
    switched = conf.read_bytes()
    conf.write_bytes(switched.replace(b"log_tcp_complete = 1 ", b"log_tcp_complete=1 "))
    with pytest.raises(MeasurementError, match=r"could not switch Tstat back: .* line 14"):
        running.stop()
    assert Path(options["state_file"]).is_file()
    conf.write_bytes(switched)  # the operator fixes the line
    Running(tstat, HTTP, "now + 1s").join()  # the next job puts log_tcp_complete back too
    assert conf.read_bytes() == ORIGINAL
    assert not Path(options["state_file"]).exists()
