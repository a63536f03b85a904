# SPDX-License-Identifier: Apache-2.0
"""Putting files into the cache: downloads (mirrors first, then upstream) and ``add``.

A file appears under its final name only after its SHA-256 matched the pin:
bytes go to a hidden temporary file in the cache directory, which is
fsynced, renamed over the final name (atomic within one file system) and the
directory fsynced. A download killed half way leaves only a ``.*.part`` file,
which the next writer removes.

Writers take an exclusive ``flock`` on ``.lock`` in the cache directory for
the whole operation. That serialises two fetches filling the same cache
(the second finds the files present), and it is what makes removing stale
``.part`` files safe: whoever holds the lock knows no live writer owns one.
The kernel drops the lock when a process dies, even by SIGKILL. Readers
(``check``, ``path``, the lookup plugin) never lock, so a read-only cache
(a write-protected USB stick, a shared NFS export) works for them.
"""

import contextlib
import fcntl
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from artifacts.cache import CACHE_ENV, CHUNK, CLI, MISSING, Cache
from artifacts.errors import ArtifactError, FetchError, UnknownArtifactError
from artifacts.manifest import Artifact, Manifest

MIRROR_ENV = "PROBEFORGE_ARTIFACT_MIRROR"
LOCK_NAME = ".lock"
PART_SUFFIX = ".part"
USER_AGENT = "probeforge-artifacts/0.1"
DEFAULT_TIMEOUT = 60.0
FILE_MODE = 0o644


def resolve_mirrors(explicit: Sequence[str] = (),
                    environ: Mapping[str, str] | None = None) -> list[str]:
    """``--mirror URL`` (repeatable) > ``$PROBEFORGE_ARTIFACT_MIRROR`` (space-separated) > none.

    A mirror is a base URL holding the cache's files by their manifest names
    (any web server in front of a filled cache directory will do). A local
    directory is accepted too and turned into a ``file://`` URL.
    """
    environ = os.environ if environ is None else environ
    chosen = list(explicit) or environ.get(MIRROR_ENV, "").split()
    mirrors = []
    for mirror in chosen:
        if "://" not in mirror:
            mirror = Path(mirror).expanduser().absolute().as_uri()
        mirrors.append(mirror.rstrip("/"))
    return mirrors


def mirror_url(mirror: str, artifact: Artifact) -> str:
    return f"{mirror}/{quote(artifact.file)}"


@dataclass(frozen=True)
class Fetched:
    artifact: Artifact
    path: Path
    source: str | None  # None: it was already in the cache
    replaced: str | None = None  # the cache's complaint about the file a download replaced


Log = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


@contextlib.contextmanager
def writer_lock(directory: Path) -> Iterator[None]:
    """Hold the cache's writer lock; remove temporary files of writers that died."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = open(directory / LOCK_NAME, "a")  # noqa: SIM115 - held across the yield
    except OSError as exc:
        raise ArtifactError(f"cannot write to the cache {directory} ({exc.strerror}): "
                            f"choose a writable directory with --cache or ${CACHE_ENV}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in directory.glob(f".*{PART_SUFFIX}"):
            stale.unlink(missing_ok=True)
        yield


class _Mismatch(Exception):
    pass


class _Part:
    """A hidden temporary file in the cache directory that becomes ``final`` or disappears."""

    def __init__(self, final: Path) -> None:
        self.final = final
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.",
                                    suffix=PART_SUFFIX)
        self.path = Path(name)
        self.handle: BinaryIO = os.fdopen(fd, "wb")
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.handle.write(chunk)
        self.digest.update(chunk)
        self.size += len(chunk)

    def commit(self) -> None:
        # mkstemp made it 0600; these are public upstream files others read.
        os.fchmod(self.handle.fileno(), FILE_MODE)
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.path, self.final)
        _fsync_dir(self.final.parent)

    def discard(self) -> None:
        self.handle.close()
        self.path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check(artifact: Artifact, size: int, sha256: str) -> str | None:
    """Why these bytes are not the pinned file, or None when they are."""
    if artifact.size is not None and size != artifact.size:
        return f"{size} bytes, expected {artifact.size}"
    if sha256 != artifact.sha256:
        return f"sha256 {sha256}, expected {artifact.sha256}"
    return None


def _download(url: str, artifact: Artifact, part: _Part, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        while chunk := response.read(CHUNK):
            part.write(chunk)
            if artifact.size is not None and part.size > artifact.size:
                # A wrong or hostile answer must not fill the disk.
                raise _Mismatch(f"served more than the pinned {artifact.size} bytes")
    problem = _check(artifact, part.size, part.digest.hexdigest())
    if problem:
        raise _Mismatch(f"served {problem}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}".rstrip()
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return getattr(reason, "strerror", None) or str(reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _fetch_one(cache: Cache, artifact: Artifact, mirrors: Sequence[str], timeout: float,
               log: Log) -> Fetched:
    status = cache.status(artifact)
    if status.ok:
        return Fetched(artifact, status.path, None)
    sources = [mirror_url(mirror, artifact) for mirror in mirrors] + [artifact.url]
    failures: list[str] = []
    mismatched = False
    for url in sources:
        log(f"{artifact.name}: downloading {url}")
        part = _Part(cache.path(artifact))
        try:
            _download(url, artifact, part, timeout)
        except _Mismatch as exc:
            part.discard()
            mismatched = True
            failures.append(f"{url} {exc}")
            continue
        except (OSError, http.client.HTTPException, ValueError) as exc:
            part.discard()
            failures.append(f"{url}: {_describe(exc)}")
            continue
        except BaseException:
            part.discard()
            raise
        part.commit()
        return Fetched(artifact, part.final, url,
                       status.message if status.state != MISSING else None)
    if artifact.how:
        # Files we make ourselves (git archive): upstream never serves the pinned
        # bytes, so whatever went wrong, the way out is the documented command.
        fix = artifact.how
    elif mismatched:
        fix = (f"check the pin and the mirror; if upstream changed the file, get the pinned one "
               f"another way and run `{CLI} add FILE` (sha256 {artifact.sha256})")
    else:
        fix = (f"check the network and the mirror, or get the file another way and "
               f"run `{CLI} add FILE` (sha256 {artifact.sha256})")
    raise FetchError(artifact.name, f"could not fetch {artifact.name} ({artifact.file}), "
                     f"nothing was saved: {'; '.join(failures)}: {fix}")


def fetch(cache: Cache, artifacts: Sequence[Artifact], mirrors: Sequence[str] = (),
          timeout: float = DEFAULT_TIMEOUT, log: Log = _quiet,
          on_error: Callable[[FetchError], None] | None = None) -> list[Fetched]:
    """Make every artifact present and verified, trying mirrors in order, then upstream.

    Files already present are hashed and kept; corrupt ones are replaced by
    a verified download (never removed before one succeeded). Without
    ``on_error`` the first failure raises; with it, every artifact is tried
    and failures are handed to it.
    """
    done: list[Fetched] = []
    # Checked before locking, so a complete read-only cache (a write-protected
    # USB stick) passes; what is missing is checked again under the lock, as
    # a concurrent fetch may have brought it meanwhile.
    todo = []
    for artifact in artifacts:
        status = cache.status(artifact)
        if status.ok:
            done.append(Fetched(artifact, status.path, None))
        else:
            todo.append(artifact)
    if not todo:
        return done
    with writer_lock(cache.directory):
        for artifact in todo:
            try:
                done.append(_fetch_one(cache, artifact, mirrors, timeout, log))
            except FetchError as exc:
                if on_error is None:
                    raise
                on_error(exc)
    order = {artifact.name: index for index, artifact in enumerate(artifacts)}
    return sorted(done, key=lambda item: order[item.artifact.name])


def add(cache: Cache, manifest: Manifest, source: Path, name: str | None = None) -> Fetched:
    """Copy a file obtained out of band into the cache, if it is a pinned file.

    The artifact is ``name``, else the one whose file name matches, else the
    one whose hash matches (a file renamed on its way). The hash is taken of
    the very bytes copied, so what lands in the cache is what was verified.
    """
    try:
        source_stat = source.stat()
    except OSError as exc:
        raise ArtifactError(f"{source} cannot be read ({exc.strerror}): give the path of the "
                            f"downloaded file") from None
    if not source.is_file():
        raise ArtifactError(f"{source} is not a regular file: give the path of the downloaded file")
    artifact = manifest.get(name) if name else manifest.by_file(source.name)
    if artifact is None:
        sha256 = _hash(source)
        artifact = manifest.by_sha256(sha256)
        if artifact is None:
            raise UnknownArtifactError(
                f"{source} (sha256 {sha256}) is no file of {manifest.path}: "
                f"pass --name NAME if it should be one, or check you downloaded the right file")
    if artifact.size is not None and source_stat.st_size != artifact.size:
        raise ArtifactError(f"{source} has {source_stat.st_size} bytes, expected "
                            f"{artifact.size} for {artifact.name} ({artifact.file}): not added; "
                            f"{_wrong_file_fix(artifact)}")
    with writer_lock(cache.directory):
        status = cache.status(artifact)
        if status.ok:
            # Still check what the user handed us: a wrong file should not pass silently.
            sha256 = _hash(source)
            if sha256 != artifact.sha256:
                raise ArtifactError(_wrong_file(source, sha256, artifact))
            return Fetched(artifact, status.path, None)
        part = _Part(cache.path(artifact))
        try:
            with source.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    part.write(chunk)
            sha256 = part.digest.hexdigest()
            if sha256 != artifact.sha256:
                raise ArtifactError(_wrong_file(source, sha256, artifact))
            part.commit()
        except BaseException:
            part.discard()
            raise
    return Fetched(artifact, part.final, str(source),
                   status.message if status.state != MISSING else None)


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _wrong_file_fix(artifact: Artifact) -> str:
    return artifact.how or f"download {artifact.url} again"


def _wrong_file(source: Path, sha256: str, artifact: Artifact) -> str:
    return (f"{source} has sha256 {sha256}, expected {artifact.sha256} for {artifact.name} "
            f"({artifact.file}): not added; {_wrong_file_fix(artifact)}")
