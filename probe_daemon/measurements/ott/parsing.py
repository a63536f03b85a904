# SPDX-License-Identifier: Apache-2.0
"""XML and number helpers the manifest parsers share."""

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from probe_daemon.measurements.ott.media import ManifestError


def local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def children_named(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if local_name(child.tag) == name]


def first_child(element: ET.Element, name: str) -> ET.Element | None:
    found = children_named(element, name)
    return found[0] if found else None


def to_int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def to_float(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def required_int(attributes: Mapping[str, str], name: str, default: int) -> int:
    if name not in attributes:
        return default
    value = to_int(attributes[name])
    if value is None:
        raise ManifestError(f"@{name}={attributes[name]!r} is not an integer")
    return value
