# SPDX-License-Identifier: Apache-2.0
"""Hardware-in-the-loop tests: one suite for emulated and real MiniProbes (README there)."""
