# SPDX-License-Identifier: Apache-2.0
"""Every constant docs/ott-scoring.md documents, by the name used there, and ``EPS``.

The package re-exports all of this module, and a test checks the document against the
package's names: a scoring or player constant belongs here, with its explanation there.
"""

# --- Scoring constants. ---
MANIFEST_ERROR_PENALTY = 15
MANIFEST_ERROR_CAP = 60
REDIRECT_PENALTY = 5
REDIRECT_CAP = 20
MANIFEST_SLOW_S = 1.0
MANIFEST_SLOW_PENALTY_PER_S = 10
MANIFEST_SLOW_CAP = 30
MALFORMED_PENALTY = 5
MALFORMED_CAP = 40
STARTUP_GRACE_S = 2.0
STARTUP_PENALTY_PER_S = 5
STARTUP_CAP = 20
STALL_PENALTY = 10
REBUFFER_PENALTY_PER_PCT = 2
STALL_CAP = 70
LATE_WEIGHT = 20
FAILED_PENALTY = 10
FAILED_RATIO_WEIGHT = 50
FAILED_CAP = 50
# --- Player constants. ---
ABR_SAFETY = 0.8
ABR_SAMPLES = 3
ABR_LOW_BUFFER = 0.5  # of startup_buffer_s: below it, no up-switch
LIVE_EDGE_TARGETS = 3
RUN_LIMIT_PLAYOUTS = 2
ATTEMPTS = 2

# Tolerance for comparing presentation times and buffer levels.
EPS = 1e-6
