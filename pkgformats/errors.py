# SPDX-License-Identifier: Apache-2.0
"""The one error a build reports: a single line that names the fix."""


class BuildError(Exception):
    """A package cannot be built; str() is one line saying what to change."""
