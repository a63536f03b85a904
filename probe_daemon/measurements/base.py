# SPDX-License-Identifier: Apache-2.0
"""The one protocol every measurement implements, and what they share.

A measurement offers capabilities (label, parameters with their constraints, result columns,
temporal scope) and runs one specification at a time per call of ``run``: it yields result rows
(dicts keyed by result column) until its scope ends or ``stop`` is set. When it cannot run (no
privileges, no route, tool missing) it raises ``MeasurementError`` with the reason, which the
client receives as an mPlane exception.

Conventions for a measurement module ``probe_daemon/measurements/<name>.py``:

- a class implementing ``Measurement``, constructed as ``Cls(options)`` where ``options`` is its
  ``[<name>]`` section of probe.conf (strings), keys documented in a module-level
  ``OPTIONS: dict[str, tuple[str, str]]`` (key -> (default, help));
- result and parameter elements missing from the mPlane core registry declared in a
  module-level ``ELEMENTS: dict[str, tuple[str, str]]`` (name -> (primitive, description)),
  primitive one of string, natural, real, boolean, time, address, url; the daemon's registry
  file is generated from them;
- standard library only.
"""

import ipaddress
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from probe_daemon.model import REGISTRY_CORE
from probe_daemon.when import When, format_time

# Results and parameters that the core registry lacks are defined in probe_daemon/registry.json.
REGISTRY_PROBEFORGE = "urn:probeforge:registry:measurements"


class MeasurementError(Exception):
    """The measurement cannot run or failed; the text is the client's exception message."""


@dataclass(frozen=True)
class CapabilityTemplate:
    label: str
    parameters: Mapping[str, str]  # element -> constraint: "*", "a ... b", or "a,b,c"
    results: tuple[str, ...]
    when: str
    registry: str = REGISTRY_CORE
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """One specification to run: what the measurement gets."""

    label: str  # the capability label (without the supervisor's "-N" suffix)
    parameters: Mapping[str, str]
    when: When
    received: datetime
    stop: threading.Event

    def ticks(self, **kwargs: Any) -> Iterator[datetime]:
        return self.when.ticks(self.received, self.stop, **kwargs)


class Measurement(Protocol):
    #: name of its section in probe.conf, used to switch it off
    name: str

    def capabilities(self) -> list[CapabilityTemplate]: ...

    def unavailable(self) -> str | None:
        """None when it can run here, else why not (offered capabilities are then withheld)."""
        ...

    def run(self, job: Job) -> Iterator[Mapping[str, Any]]: ...


def format_value(value: Any) -> str:
    """Result values as the RI writes them: strings, times in mPlane format."""
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e15 else str(int(value))
    return str(value)


def ip_param(parameters: Mapping[str, str], name: str, version: int) -> str:
    value = parameters.get(name, "")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise MeasurementError(f"{name}: {value!r} is not an IPv{version} address") from None
    if address.version != version:
        raise MeasurementError(f"{name}: {value!r} is not an IPv{version} address")
    return str(address)
