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
from probe_daemon.measurements.ott.constants import *  # noqa: F403
from probe_daemon.measurements.ott.dash import expand_template, iso_duration
from probe_daemon.measurements.ott.hls import parse_hls_media
from probe_daemon.measurements.ott.manifests import parse_manifest
from probe_daemon.measurements.ott.measurement import ELEMENTS, LABEL, RESULTS, WHEN, OttMeasurement
from probe_daemon.measurements.ott.media import Cursor, ManifestError
from probe_daemon.measurements.ott.player import (
    PlaybackModel,
    PlaybackStats,
    choose_level,
    harmonic_mean,
)
from probe_daemon.measurements.ott.scoring import (
    ManifestHealth,
    content_score,
    level_score,
    manifest_score,
)
from probe_daemon.measurements.ott.settings import OPTIONS, POLICIES

__all__ = [
    "ELEMENTS", "LABEL", "OPTIONS", "POLICIES", "RESULTS", "WHEN", "Cursor", "ManifestError",
    "ManifestHealth", "OttMeasurement", "PlaybackModel", "PlaybackStats", "choose_level",
    "content_score", "expand_template", "harmonic_mean", "iso_duration", "level_score",
    "manifest_score", "parse_hls_media", "parse_manifest",
]
