# SPDX-License-Identifier: Apache-2.0
"""bench/probe_daemon.py runs end to end and rewrites only its own section of the report."""

import os
import time

import pytest

from bench import probe_daemon as bench

# The first cells of the rows of its two tables, as --quick writes them.
ROWS = (
    "| resident memory after start and registration (VmRSS) | ",
    "| peak resident memory after start and registration (VmHWM) | ",
    "| resident memory after 1 ping specification (VmRSS) | ",
    "| peak resident memory after 1 ping specification (VmHWM) | ",
    "| idle CPU over 10 s, registered (% of one core) | ",
    "| idle wake-ups (context switches per second, all threads) | ",
    "| start-up, spawn → registered (s, median) | ",
    "| `ping-average-ip4` POST → result at the supervisor, component polls every 5 s "
    "(s, median) | ",
    "| `ping-average-ip4` POST → result at the supervisor, daemon polls every 1 s "
    "(s, median) | ",
    "| probe daemon, polls every 5 s (default) | 1 | ",
    "| RI ping component, polls every 5 s (fixed) | 1 | ",
    "| probe daemon, polls every 1 s | 1 | ",
)


@pytest.mark.slow
@pytest.mark.mplane_ri
def test_quick_run_writes_its_section(tmp_path):
    report = tmp_path / "b.md"
    other = "# Benchmarks\n\n<!-- bench:other:start -->\nOTHER\n<!-- bench:other:end -->\n"
    report.write_text(other)

    assert bench.main(["--quick", "--write", str(report)]) == 0

    text = report.read_text()
    assert text.startswith(other)
    assert text.count(bench.START) == 1
    assert text.count(bench.END) == 1
    assert text.index(bench.START) < text.index(bench.END)
    lines = text.splitlines()
    for row in ROWS:
        found = [line for line in lines if line.startswith(row)]
        assert len(found) == 1, row
        if row.endswith("| 1 | "):  # latency step by step: every step was seen in the logs
            assert "—" not in found[0], found[0]
    assert "**Against the RI ping component**" in text
    assert "x86 only for now" in text


def test_proc_figures_of_this_process():
    memory = bench.memory(os.getpid())
    assert 0 < memory.rss_kb <= memory.hwm_kb
    assert memory.threads >= 1
    before = bench.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert bench.cpu_seconds(os.getpid()) > before
    assert bench.context_switches(os.getpid()) > 0


def test_log_watcher_sees_lines_as_they_are_completed(tmp_path):
    log = tmp_path / "x.log"
    with bench.LogWatcher() as watcher:
        watcher.watch(log)
        start = time.monotonic()
        log.write_text("registered 1")
        time.sleep(0.05)
        assert watcher.find(log, bench.OURS_REGISTERED, start) is None  # no newline yet
        with open(log, "a") as handle:
            handle.write("3 capabilities with http://x\n")
        seen, match = watcher.wait(log, bench.OURS_REGISTERED, start, timeout=5)
        assert match.group(1) == "13"
        assert seen >= start
