# SPDX-License-Identifier: Apache-2.0
"""A manifest of any of the three formats, parsed into a ``Presentation``."""

import xml.etree.ElementTree as ET

from probe_daemon.measurements.ott.dash import parse_dash
from probe_daemon.measurements.ott.hls import parse_hls
from probe_daemon.measurements.ott.media import ManifestError, Presentation
from probe_daemon.measurements.ott.parsing import local_name
from probe_daemon.measurements.ott.smooth import parse_smooth


def parse_manifest(body: bytes, url: str) -> Presentation:
    """Any of the three formats, recognised by content rather than by name or content type."""
    head = body[:512].decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    if head.startswith("#EXTM3U"):
        return parse_hls(body.decode("utf-8", "replace"), url)
    if head.startswith("<"):
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            raise ManifestError(f"XML manifest does not parse: {exc}") from None
        tag = local_name(root.tag)
        if tag == "MPD":
            return parse_dash(root, url)
        if tag == "SmoothStreamingMedia":
            return parse_smooth(root, url)
        raise ManifestError(f"<{tag}> is neither an MPEG-DASH MPD nor a Smooth Streaming "
                            "manifest")
    raise ManifestError("not a manifest: neither #EXTM3U (HLS) nor XML (DASH, Smooth Streaming)")
