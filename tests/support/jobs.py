# SPDX-License-Identifier: Apache-2.0
"""Jobs for measurement tests, as the daemon's job runner hands them to a measurement."""

import threading
from datetime import UTC, datetime

from probe_daemon.measurements.base import Job
from probe_daemon.when import When


def make_job(label: str, when: str = "now", stop: threading.Event | None = None,
             **parameters: str) -> Job:
    """A job received now; parameter names may be spelled with "_" for "." (source_ip4)."""
    return Job(label=label, parameters={k.replace("_", "."): v for k, v in parameters.items()},
               when=When.parse(when), received=datetime.now(UTC),
               stop=stop or threading.Event())
