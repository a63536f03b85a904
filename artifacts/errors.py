# SPDX-License-Identifier: Apache-2.0
"""The exceptions every artifact-cache failure is reported with.

Each one renders as a single line that names the file and says how to fix the
problem: the same text reaches a partner through the command line, a role's
failed task (the lookup plugin) and CI logs, so it has to stand on its own.
"""

from collections.abc import Sequence
from pathlib import Path


class ArtifactError(Exception):
    """A problem the user can fix; ``str()`` is one line naming the file and the fix."""


class ManifestError(ArtifactError):
    """The manifest is unreadable or invalid; every problem found is kept, one line each."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = tuple(problems)
        super().__init__("; ".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"manifest {self.path}: {problem}" for problem in self.problems]


class UnknownArtifactError(ArtifactError):
    """A name or group the manifest does not define."""


class CacheError(ArtifactError):
    """A file in the cache is missing or is not the pinned file."""

    def __init__(self, name: str, state: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.state = state


class FetchError(ArtifactError):
    """No source delivered the pinned bytes; nothing was left under the final name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
