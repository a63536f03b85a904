# SPDX-License-Identifier: Apache-2.0
"""Run the probe daemon as a real process, the way an init system would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from probe_daemon.settings import SETTINGS

REPO = Path(__file__).resolve().parents[2]


def registry_file(directory: Path) -> Path:
    """The daemon's registry, as a supervisor or client preloads it."""
    path = directory / "probeforge-registry.json"
    path.write_text(subprocess.run(
        [sys.executable, "-m", "probe_daemon", "--print-registry"], cwd=REPO, check=True,
        capture_output=True, text=True).stdout)
    return path


class ProbeDaemon:
    def __init__(self, work_dir: Path, supervisor_url: str, *, ca_file: Path | None = None,
                 cert_file: Path | None = None, key_file: Path | None = None,
                 sections: dict[str, dict[str, str]] | None = None,
                 poll_interval: float = 1.0, name: str = "probe",
                 settings: dict[str, str] | None = None) -> None:
        self.work_dir = work_dir
        self.config_path = work_dir / f"{name}.conf"
        self.log_path = work_dir / f"{name}.log"
        self.spool_dir = work_dir / f"{name}-state" / "spool"
        self.supervisor_url = supervisor_url
        self.tls_files = (ca_file, cert_file, key_file)
        self.poll_interval = poll_interval
        self.write_config(sections, settings)
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self, sections: dict[str, dict[str, str]] | None = None,
                     settings: dict[str, str] | None = None) -> None:
        """(Re)write probe.conf: measurement sections, and [mplane]/[daemon] settings by name."""
        ca_file, cert_file, key_file = self.tls_files
        tls = ca_file is not None
        mplane = {"supervisor_url": self.supervisor_url, "tls": "yes" if tls else "no",
                  "poll_interval": str(self.poll_interval), "backoff_max": "2", "timeout": "10"}
        if tls:
            mplane.update(ca_file=str(ca_file), cert_file=str(cert_file), key_file=str(key_file))
        daemon = {"spool_dir": str(self.spool_dir), "log_level": "debug"}
        section_of = {s.name: s.section for s in SETTINGS}
        for key, value in (settings or {}).items():
            (mplane if section_of[key] == "mplane" else daemon)[key] = value
        lines = ["[mplane]", *(f"{k} = {v}" for k, v in mplane.items()),
                 "[daemon]", *(f"{k} = {v}" for k, v in daemon.items())]
        for section, options in (sections or {}).items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {value}" for key, value in options.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def __enter__(self) -> ProbeDaemon:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "probe_daemon", "--config", str(self.config_path)],
                cwd=self.work_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 30.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if len(re.findall(pattern, text)) >= count:
                return text
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"probe daemon exited ({self.process.returncode}):\n"
                                     f"{text[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} in the daemon log after {timeout} s:\n"
                             f"{self.log()[-3000:]}")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"daemon ignored SIGTERM:\n{self.log()[-3000:]}") from None
