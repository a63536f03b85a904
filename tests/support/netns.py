# SPDX-License-Identifier: Apache-2.0
"""Network namespaces for measurement tests, and one measurement job run inside one.

Namespaces get unique names and are deleted afterwards, exactly those made; a job runs in a
fresh Python in the namespace (maybe as another user) and reports back as JSON.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

# Runs one job in another network namespace (and maybe as another user); prints JSON.
RUNNER = r'''
import importlib, json, sys, threading, time
from datetime import UTC, datetime
from probe_daemon.measurements.base import Job, MeasurementError, format_value
from probe_daemon.when import When

args = json.loads(sys.argv[1])
module, _, name = args["target"].partition(":")
measurement = getattr(importlib.import_module(module), name)(args.get("options", {}))
stop = threading.Event()
if args.get("stop_after"):
    timer = threading.Timer(args["stop_after"], stop.set)
    timer.daemon = True
    timer.start()
job = Job(label=args["label"], parameters=args["parameters"], when=When.parse(args["when"]),
          received=datetime.now(UTC), stop=stop)
out = {"unavailable": measurement.unavailable()}
began = time.monotonic()
try:
    out["rows"] = [{k: format_value(v) for k, v in row.items()} for row in measurement.run(job)]
except MeasurementError as exc:
    out["error"] = str(exc)
out["seconds"] = time.monotonic() - began
print(json.dumps(out))
'''

_TOOLS = {"ip": "ip (iproute2)", "setpriv": "setpriv (util-linux)"}


def netns_required(*tools: str) -> pytest.MarkDecorator:
    """Skip unless root with ip and these further tools (keys of _TOOLS)."""
    wanted = ["ip", *tools]
    return pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in wanted),
                              reason=f"needs root and {' and '.join(_TOOLS[t] for t in wanted)}")


def in_ns(name: str, *command: str) -> None:
    subprocess.run(["ip", "netns", "exec", name, *command], check=True, capture_output=True)


def ip(name: str, *args: str) -> None:
    subprocess.run(["ip", "-n", name, *args], check=True, capture_output=True)


@contextmanager
def namespaces(prefix: str, *sysctls: str) -> Iterator[Callable[..., str]]:
    """A maker of namespaces ``<prefix>-<random>`` with lo up and ``sysctls`` (plus those of
    the call) set; on leaving, exactly the namespaces it made are deleted."""
    created: list[str] = []

    def make(*more: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        created.append(name)
        ip(name, "link", "set", "lo", "up")
        if sysctls or more:
            in_ns(name, "sysctl", "-qw", *sysctls, *more)
        return name

    try:
        yield make
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], check=False)


def run_job(name: str, target: str, label: str, destination: str, when: str = "now",
           user: Sequence[str] | None = None, **extra: Any) -> dict[str, Any]:
    """Run ``label`` of the measurement ``target`` (module:Class) towards ``destination``
    in namespace ``name``, as ``user`` (a setpriv command) if given; ``extra`` may add
    ``options`` and ``stop_after`` (seconds). Returns the runner's JSON."""
    family = label[-3:]
    args = {"target": target, "label": label, "when": when,
            "parameters": {f"destination.{family}": destination}, **extra}
    command = ["ip", "netns", "exec", name, *(user or ()), sys.executable, "-c", RUNNER,
               json.dumps(args)]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
