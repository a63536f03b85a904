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
  ``OPTIONS: dict[str, tuple[str, str]]`` (key -> (default, help)) and read with ``Options``;
- result and parameter elements missing from the mPlane core registry declared in a
  module-level ``ELEMENTS: dict[str, tuple[str, str]]`` (name -> (primitive, description)),
  primitive one of string, natural, real, boolean, time, address, url; the daemon's registry
  file is generated from them;
- standard library only.
"""

import ipaddress
import math
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


class Options:
    """A measurement's section of probe.conf, read against its ``OPTIONS`` table.

    A key the section lacks takes the table's default. A value that does not parse, or lies
    outside its bounds (inclusive ``minimum``/``maximum``, exclusive ``above``), raises
    ``ValueError``: ``option <key>: '<value>' is not <what it must be>``.
    """

    def __init__(self, given: Mapping[str, str] | None,
                 table: Mapping[str, tuple[str, str]]) -> None:
        self.given = dict(given or {})
        self.table = table

    def unknown(self) -> list[str]:
        """Keys of the section that the table does not document, sorted."""
        return sorted(set(self.given) - set(self.table))

    def text(self, key: str) -> str:
        return self.given.get(key, self.table[key][0]).strip()

    def integer(self, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
        text = self.text(key)
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not _within(value, minimum, maximum):
            raise self.error(key, text, "a whole number" + _bounds(minimum, maximum))
        return value

    def number(self, key: str, minimum: float | None = None, maximum: float | None = None,
               above: float | None = None) -> float:
        text = self.text(key)
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if (not math.isfinite(value) or not _within(value, minimum, maximum)
                or (above is not None and value <= above)):
            more = f" greater than {_show(above)}" if above is not None else ""
            raise self.error(key, text, "a number" + more + _bounds(minimum, maximum))
        return value

    def error(self, key: str, text: str, expected: str) -> ValueError:
        """The error for ``text`` as the value of ``key``; ``expected`` says what would do."""
        return ValueError(f"option {key}: {text!r} is not {expected}")


def _within(value: float, minimum: float | None, maximum: float | None) -> bool:
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {_show(minimum)} to {_show(maximum)}"
    if minimum is not None:
        return f" of at least {_show(minimum)}"
    if maximum is not None:
        return f" of at most {_show(maximum)}"
    return ""


def _show(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)
