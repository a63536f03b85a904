# SPDX-License-Identifier: Apache-2.0
"""Element types, parameter checking, and the registry file supervisors and clients preload.

The mPlane core registry ships inside mplane-sdk; the elements our measurements add are
declared by each measurement module (``ELEMENTS``) and published as one registry that
includes the core one.
"""

import importlib
import ipaddress
import json
import math
import urllib.parse
from collections.abc import Iterable, Mapping

from probe_daemon.measurements.base import REGISTRY_PROBEFORGE
from probe_daemon.model import REGISTRY_CORE
from probe_daemon.when import WhenError, parse_time

# The core elements our capabilities use, with their primitives (from the mPlane core
# registry). Only what is needed to check parameters; results are not re-checked.
CORE_PRIMITIVES: dict[str, str] = {
    "source.ip4": "address", "source.ip6": "address",
    "destination.ip4": "address", "destination.ip6": "address",
    "destination.url": "url", "content.url": "url", "destination.port": "natural",
    "source.port": "natural", "time": "time", "start": "time", "end": "time",
    "duration.ms": "natural", "octets.layer7": "natural", "packets.ip": "natural",
    "hops.ip": "natural",
}

MEASUREMENT_MODULES: dict[str, str] = {
    "ping": "probe_daemon.measurements.ping:PingMeasurement",
    "traceroute": "probe_daemon.measurements.traceroute:TracerouteMeasurement",
    "http": "probe_daemon.measurements.http_download:HttpDownloadMeasurement",
    "dns": "probe_daemon.measurements.dns:DnsMeasurement",
    "ott": "probe_daemon.measurements.ott:OttMeasurement",
    "tstat": "probe_daemon.measurements.tstat:TstatMeasurement",
}

MAX_STRING = 2048


class ParameterError(ValueError):
    """A parameter value the capability does not accept; the text goes to the client."""


def declared_elements() -> dict[str, tuple[str, str]]:
    elements: dict[str, tuple[str, str]] = {}
    for target in MEASUREMENT_MODULES.values():
        module = importlib.import_module(target.split(":")[0])
        elements.update(getattr(module, "ELEMENTS", {}))
    return elements


def primitive(name: str, extra: Mapping[str, tuple[str, str]]) -> str:
    if name in extra:
        return extra[name][0]
    return CORE_PRIMITIVES.get(name, "string")


def registry_json(elements: Mapping[str, tuple[str, str]]) -> str:
    """The registry as the mPlane RI's ``registry_preload`` reads it (format mplane-0)."""
    return json.dumps({
        "registry-format": "mplane-0",
        "registry-uri": REGISTRY_PROBEFORGE,
        "registry-revision": 1,
        "includes": [REGISTRY_CORE],
        "elements": [{"name": name, "prim": prim, "desc": desc}
                     for name, (prim, desc) in sorted(elements.items())],
    }, indent=2) + "\n"


def parse_value(name: str, prim: str, text: str) -> object:
    if len(text) > MAX_STRING:
        raise ParameterError(f"{name}: value longer than {MAX_STRING} characters")
    try:
        if prim == "address":
            return ipaddress.ip_address(text)
        if prim == "natural":
            value = int(text)
            if value < 0:
                raise ValueError
            return value
        if prim == "real":
            number = float(text)
            if not math.isfinite(number):
                raise ValueError
            return number
        if prim == "boolean":
            if text not in ("True", "False"):
                raise ValueError
            return text == "True"
        if prim == "time":
            return parse_time(text)
        if prim == "url":
            parts = urllib.parse.urlsplit(text)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError
            _ = parts.port  # raises on a malformed port
            return text
    except (ValueError, WhenError):
        raise ParameterError(f"{name}: {text!r} is not a valid {prim}") from None
    return text


def check_parameter(name: str, prim: str, constraint: str, text: str) -> None:
    """Raise ParameterError unless ``text`` is a valid value within ``constraint``."""
    value = parse_value(name, prim, text)
    constraint = constraint.strip()
    if constraint in ("", "*"):
        return
    if " ... " in constraint:
        low, high = (parse_value(name, prim, part.strip()) for part in constraint.split(" ... "))
        try:
            inside = low <= value <= high  # type: ignore[operator]
        except TypeError:
            inside = False
        if not inside:
            raise ParameterError(f"{name}: {text} is outside {constraint}")
        return
    allowed: Iterable[object] = (parse_value(name, prim, part.strip())
                                 for part in constraint.split(","))
    if value not in set(allowed):
        raise ParameterError(f"{name}: {text} is not one of {constraint}")
