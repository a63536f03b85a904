# SPDX-License-Identifier: Apache-2.0
"""OTT video delivery measured the way a player experiences it: HLS, MPEG-DASH, Smooth Streaming.

Takes the place of the proprietary ``probe-ott`` of the mPlane testbeds, offering the same
capability (``ott-download``) with the same parameters and result columns, so existing clients
keep working. Each tick of the specification is one run: fetch the manifest, then download
segments as a simple player would, in step with presentation time (never further ahead than
``max_buffer_s``), with a simulated playout buffer that tells when a viewer would have seen the
picture freeze. Nothing is decoded: segment bytes are counted and dropped, which keeps the
daemon within a MiniProbe's memory.

The scores and the player model are specified in docs/ott-scoring.md; the constants in
``constants`` carry the names used there and are all importable from here, and a test keeps
the two in agreement.

Modules, each with one concern: ``settings`` (the ``[ott]`` options), ``fetch`` (HTTP),
``media`` (what a manifest describes), ``manifests`` with ``hls``, ``dash``, ``smooth`` and
``parsing`` (reading the three formats), ``player`` (playout buffer and rate selection),
``scoring``, ``playout`` (one run of the player) and ``measurement`` (the capability).
"""

# Every documented constant, so that the document test sees each one.
from importlib import import_module

from probe_daemon.measurements.ott.constants import *  # noqa: F403
from probe_daemon.measurements.ott.measurement import ELEMENTS, LABEL, RESULTS, WHEN, OttMeasurement
from probe_daemon.measurements.ott.settings import OPTIONS, POLICIES

# The parsers and the player load on first use (PEP 562): the daemon imports this package at
# start for its capability, and a MiniProbe should not hold xml.etree and expat for nothing.
_LAZY = {
    "expand_template": "dash", "iso_duration": "dash", "parse_hls_media": "hls",
    "parse_manifest": "manifests", "Cursor": "media", "ManifestError": "media",
    "PlaybackModel": "player", "PlaybackStats": "player", "choose_level": "player",
    "harmonic_mean": "player", "ManifestHealth": "scoring", "content_score": "scoring",
    "level_score": "scoring", "manifest_score": "scoring",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)


__all__ = ["ELEMENTS", "LABEL", "OPTIONS", "POLICIES", "RESULTS", "WHEN", "OttMeasurement",
           *_LAZY]
