# SPDX-License-Identifier: Apache-2.0
"""Benchmarks behind the performance budgets in DESIGN.md; each writes its own section of
docs/benchmarks.md (``make bench``)."""
