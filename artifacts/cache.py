# SPDX-License-Identifier: Apache-2.0
"""The cache directory: where it is, what state each pinned file is in, and verified paths.

Every use hashes the file again. There is deliberately no "verified" stamp
(size + mtime + hash cached beside the file): a cache is often filled on one
machine and carried on a USB stick or synced from a mirror, and ``cp -p``,
``rsync -t`` or ``touch -r`` keep size and mtime while bit rot or a
truncated copy changes the bytes (FAT even rounds mtimes to two seconds). A
stamp would turn "verified on every use" into "verified once, trusted after".
The files are small (the largest, the GLIMPSE source, is 7.4 MB): hashing
all of them costs well under a second.
"""

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from artifacts.errors import CacheError
from artifacts.manifest import Artifact

CACHE_ENV = "PROBEFORGE_ARTIFACT_CACHE"
DEFAULT_CACHE = Path("~/.cache/probeforge/artifacts")
CHUNK = 1 << 20
CLI = "probeforge-artifacts"

PRESENT = "present"
MISSING = "missing"
CORRUPT = "corrupt"


def resolve_cache_dir(explicit: str | os.PathLike[str] | None = None,
                      environ: Mapping[str, str] | None = None) -> Path:
    """``--cache DIR`` > ``$PROBEFORGE_ARTIFACT_CACHE`` > ``~/.cache/probeforge/artifacts``."""
    environ = os.environ if environ is None else environ
    chosen = explicit or environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(chosen).expanduser().absolute()


def sha256_file(path: Path) -> tuple[str, int]:
    """Stream ``path`` through SHA-256; return the hex digest and the number of bytes read."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def missing_message(artifact: Artifact, directory: Path) -> str:
    message = (f"{artifact.file} is missing from {directory}: run `{CLI} fetch {artifact.name}` "
               f"on a machine with internet access, or copy the file there "
               f"(sha256 {artifact.sha256})")
    if artifact.how:
        message += f"; {artifact.how}"
    return message


def mismatch_message(artifact: Artifact, path: Path, actual: str) -> str:
    return (f"{path} has sha256 {actual}, expected {artifact.sha256}: delete it and fetch again "
            f"(`{CLI} fetch {artifact.name}`)")


@dataclass(frozen=True)
class Status:
    artifact: Artifact
    path: Path
    state: str
    message: str | None = None
    size: int | None = None

    @property
    def ok(self) -> bool:
        return self.state == PRESENT


class Cache:
    """A flat directory of pinned files, named as the manifest says."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, artifact: Artifact) -> Path:
        return self.directory / artifact.file

    def status(self, artifact: Artifact) -> Status:
        """Hash the cached file now and say whether it is the pinned one."""
        path = self.path(artifact)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return Status(artifact, path, MISSING, missing_message(artifact, self.directory))
        except OSError as exc:
            return Status(artifact, path, CORRUPT, f"{path} cannot be read ({exc.strerror}): "
                          f"fix its permissions or delete it and fetch again")
        if not path.is_file():
            return Status(artifact, path, CORRUPT,
                          f"{path} is not a regular file: remove it and fetch again "
                          f"(`{CLI} fetch {artifact.name}`)")
        if artifact.size is not None and stat.st_size != artifact.size:
            # A truncated or different file: no need to read it to know.
            return Status(artifact, path, CORRUPT,
                          f"{path} has {stat.st_size} bytes, expected {artifact.size}: delete it "
                          f"and fetch again (`{CLI} fetch {artifact.name}`)", stat.st_size)
        try:
            actual, size = sha256_file(path)
        except OSError as exc:
            return Status(artifact, path, CORRUPT, f"{path} cannot be read ({exc.strerror}): "
                          f"fix its permissions or delete it and fetch again")
        if actual != artifact.sha256:
            return Status(artifact, path, CORRUPT, mismatch_message(artifact, path, actual), size)
        return Status(artifact, path, PRESENT, None, size)

    def verified_path(self, artifact: Artifact) -> Path:
        """The absolute path of the pinned file, hashed just now; :class:`CacheError` otherwise."""
        status = self.status(artifact)
        if not status.ok:
            raise CacheError(artifact.name, status.state, status.message or status.state)
        return status.path
