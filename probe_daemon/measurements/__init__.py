# SPDX-License-Identifier: Apache-2.0
"""Measurements: each module offers capabilities and runs specifications for them."""
