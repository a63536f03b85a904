# SPDX-License-Identifier: Apache-2.0
"""The spool keeps results across restarts, stays bounded, and survives kill -9."""

import json
import logging
import signal
import subprocess
import sys
import time

import pytest

from probe_daemon.backoff import Backoff
from probe_daemon.settings import ConfigError, load
from probe_daemon.spool import Spool
from tests.conftest import REPO


def test_fifo_and_persistence(tmp_path):
    spool = Spool(tmp_path, max_messages=10, max_bytes=10_000)
    for i in range(3):
        spool.put(f'{{"n": {i}}}'.encode())
    seq, body = spool.peek()
    assert json.loads(body) == {"n": 0}
    spool.done(seq)
    reopened = Spool(tmp_path, max_messages=10, max_bytes=10_000)
    assert len(reopened) == 2
    assert json.loads(reopened.peek()[1]) == {"n": 1}
    reopened.put(b'{"n": 3}')
    assert sorted(p.name for p in tmp_path.iterdir())[-1] == "000000000004.msg"


def test_bound_drops_oldest_and_says_so(tmp_path, caplog):
    spool = Spool(tmp_path, max_messages=3, max_bytes=10_000)
    with caplog.at_level(logging.WARNING):
        for i in range(5):
            spool.put(f'{{"n": {i}}}'.encode())
    assert len(spool) == 3 and spool.dropped == 2
    assert json.loads(spool.peek()[1]) == {"n": 2}
    assert "dropped the 1 oldest" in caplog.text and "2 in all" in caplog.text
    by_bytes = Spool(tmp_path / "b", max_messages=100, max_bytes=25)
    for i in range(5):
        by_bytes.put(f'{{"n": {i}}}'.encode())  # 8 bytes each
    assert len(by_bytes) == 3


WRITER = """
import sys
from probe_daemon.spool import Spool
spool = Spool(sys.argv[1], 100000, 1 << 30)
i = 0
while True:
    spool.put(('{"n": %d, "pad": "%s"}' % (i, "x" * 3000)).encode())
    i += 1
"""


@pytest.mark.slow
def test_kill_9_never_corrupts_the_spool(tmp_path):
    for round_ in range(5):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=REPO)
        time.sleep(0.3 + 0.1 * round_)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        spool = Spool(tmp_path, 100000, 1 << 30)
        assert not list(tmp_path.glob(".*.tmp"))
        numbers = [json.loads(p.read_bytes())["n"] for p in sorted(tmp_path.glob("*.msg"))]
        assert numbers, "the writer wrote nothing"
        # Every committed message is complete.
        assert all(json.loads(p.read_bytes())["pad"] == "x" * 3000
                   for p in tmp_path.glob("*.msg"))
        del spool


def test_backoff_grows_with_jitter_and_caps():
    import random

    backoff = Backoff(1.0, 60.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(10)]
    assert 0.5 <= delays[0] <= 1.0
    assert all(30.0 <= d <= 60.0 for d in delays[6:])
    assert len(set(delays)) == len(delays)
    backoff.reset()
    assert backoff.next_delay() <= 1.0


# -- settings --------------------------------------------------------------------------------

def write(tmp_path, text):
    path = tmp_path / "probe.conf"
    path.write_text(text)
    return path


def test_settings_defaults_file_and_flags(tmp_path):
    path = write(tmp_path, "[mplane]\nsupervisor_url = https://127.0.0.1:8889/\n"
                 "[daemon]\nspool_max_bytes = 2M\n[ping]\nenabled = no\n")
    config = load(path, {"timeout": "3"})
    assert config.supervisor_url == "https://127.0.0.1:8889/"
    assert config.spool_max_bytes == 2 * 1024 * 1024
    assert config.timeout == 3.0
    assert config.tls is True
    assert not config.measurement_enabled("ping") and config.measurement_enabled("dns")


@pytest.mark.parametrize(("text", "message"), [
    ("[mplane]\n", "[mplane] supervisor_url is not set"),
    ("[mplane]\nsupervisor_url = ftp://x/\n", "supervisor_url = 'ftp://x/': expected http"),
    ("[mplane]\nsupervisor_url = http://x/\nsuperviser = y\n", "[mplane] superviser is not"),
    ("[mplane]\nsupervisor_url = http://x/\ntls = maybe\n", "tls = 'maybe': expected yes or no"),
    ("[mplane]\nsupervisor_url = http://x/\n[daemon]\nmax_jobs = 0\n", "must be positive"),
    ("not ini", "File contains no section headers"),
])
def test_bad_settings_name_key_and_fix(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load(write(tmp_path, text))
    assert message in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.conf")
