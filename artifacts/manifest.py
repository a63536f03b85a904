# SPDX-License-Identifier: Apache-2.0
"""The manifest: every file a build downloads from upstream, with its pinned URL and SHA-256.

The manifest is data (``artifacts/manifest.yml``). Loading it checks everything
a build would otherwise trip over later - a short hash, two entries writing the
same cache file, a group nobody defined - and reports every problem at once,
one line each, so a partner editing it fixes it in one pass.
"""

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from artifacts.errors import ManifestError, UnknownArtifactError

MANIFEST_ENV = "PROBEFORGE_ARTIFACT_MANIFEST"
DEFAULT_MANIFEST = Path(__file__).resolve().parent / "manifest.yml"
MANIFEST_VERSION = 1

_NAME = re.compile(r"[a-z0-9][a-z0-9._+-]*")
_GROUP = re.compile(r"[a-z][a-z0-9_-]*")
# Cache files live side by side in one flat directory that may sit on a FAT USB
# stick or be served by any web server: plain names only, never hidden ones
# (temporary files start with a dot).
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")

_TOP_KEYS = frozenset({"version", "groups", "artifacts"})
_ENTRY_KEYS = frozenset(
    {"name", "file", "url", "sha256", "size", "groups", "license", "how", "note", "git"}
)
_GIT_KEYS = frozenset({"repository", "commit", "prefix"})


@dataclass(frozen=True)
class GitSource:
    """Where a source tarball that we make ourselves (``git archive``) comes from."""

    repository: str
    commit: str
    prefix: str

    def archive_command(self, file: str) -> str:
        """The one command that makes the pinned file from a clone of ``repository``.

        Forges serve archives made on the fly whose bytes are not stable (and
        name the top directory after the full commit id), so the pin is on the
        output of this command: ``git archive`` is byte-stable for a commit,
        and ``gzip -n`` leaves out the file name and time stamp.
        """
        return (f"git archive --format=tar --prefix={self.prefix} {self.commit[:7]} "
                f"| gzip -n -9 > {file}")


@dataclass(frozen=True)
class Artifact:
    """One pinned upstream file."""

    name: str
    file: str
    url: str
    sha256: str
    size: int | None
    groups: tuple[str, ...]
    license: str | None = None
    how: str | None = None
    note: str | None = None
    git: GitSource | None = None


@dataclass(frozen=True)
class Manifest:
    path: Path
    groups: Mapping[str, str]
    artifacts: tuple[Artifact, ...]

    def get(self, name: str) -> Artifact:
        for artifact in self.artifacts:
            if artifact.name == name:
                return artifact
        known = ", ".join(a.name for a in self.artifacts)
        raise UnknownArtifactError(f"no artifact named {name!r} in {self.path}: "
                                   f"use one of {known}")

    def by_file(self, file: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.file == file), None)

    def by_sha256(self, sha256: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.sha256 == sha256), None)

    def group(self, group: str | None) -> tuple[Artifact, ...]:
        """Every artifact of ``group`` (all of them for None), in manifest order."""
        if group is None:
            return self.artifacts
        if group not in self.groups:
            raise UnknownArtifactError(f"no group named {group!r} in {self.path}: "
                                       f"use one of {', '.join(sorted(self.groups))}")
        return tuple(a for a in self.artifacts if group in a.groups)

    def select(self, names: Iterable[str] = (), group: str | None = None) -> tuple[Artifact, ...]:
        """Artifacts by name (in the order given) or by group; every one when neither is given."""
        names = list(names)
        if names and group is not None:
            raise UnknownArtifactError("give artifact names or --group, not both")
        if names:
            return tuple(self.get(name) for name in dict.fromkeys(names))
        return self.group(group)


def resolve_manifest_path(explicit: str | os.PathLike[str] | None = None,
                          environ: Mapping[str, str] | None = None) -> Path:
    """``--manifest`` > ``$PROBEFORGE_ARTIFACT_MANIFEST`` > the manifest shipped with probeforge."""
    environ = os.environ if environ is None else environ
    chosen = explicit or environ.get(MANIFEST_ENV) or DEFAULT_MANIFEST
    return Path(chosen).expanduser().absolute()


def load_manifest(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Manifest:
    path = resolve_manifest_path(path, environ)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(path, [f"cannot be read ({exc.strerror or exc}): fix the path "
                                   f"(--manifest or ${MANIFEST_ENV})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f"line {where.line + 1}: " if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError(path, [f"{line}not valid YAML ({problem})"]) from None
    return parse_manifest(data, path)


def parse_manifest(data: Any, path: Path) -> Manifest:
    """Validate decoded YAML; raise :class:`ManifestError` listing every problem found."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ManifestError(path, ["must be a mapping with version, groups and artifacts"])
    for key in sorted(set(data) - _TOP_KEYS, key=str):
        problems.append(f"unknown top-level key {key!r} (allowed: {', '.join(sorted(_TOP_KEYS))})")
    if data.get("version") != MANIFEST_VERSION:
        problems.append(f"version must be {MANIFEST_VERSION}, got {data.get('version')!r}")

    groups: dict[str, str] = {}
    raw_groups = data.get("groups")
    if not isinstance(raw_groups, dict) or not raw_groups:
        problems.append("groups must be a non-empty mapping of group name to description")
    else:
        for group, description in raw_groups.items():
            if not isinstance(group, str) or not _GROUP.fullmatch(group):
                problems.append(f"group name {group!r} must match {_GROUP.pattern}")
            elif not isinstance(description, str) or not description.strip():
                problems.append(f"group {group}: needs a one-line description")
            else:
                groups[group] = description.strip()

    artifacts: list[Artifact] = []
    raw_artifacts = data.get("artifacts")
    if not isinstance(raw_artifacts, list) or not raw_artifacts:
        problems.append("artifacts must be a non-empty list")
        raw_artifacts = []
    names: dict[str, int] = {}
    files: dict[str, str] = {}
    for index, entry in enumerate(raw_artifacts, start=1):
        artifact = _parse_entry(entry, index, groups, problems)
        if artifact is None:
            continue
        if artifact.name in names:
            problems.append(f"duplicate artifact name {artifact.name!r} "
                            f"(entries {names[artifact.name]} and {index})")
            continue
        if artifact.file in files:
            # Both would be written to, and verified against, the same cache file.
            problems.append(f"duplicate file name {artifact.file!r} "
                            f"(artifacts {files[artifact.file]} and {artifact.name})")
            continue
        names[artifact.name] = index
        files[artifact.file] = artifact.name
        artifacts.append(artifact)

    if not problems:
        # Only on an otherwise valid manifest: a rejected entry would make its
        # group look empty and bury the real problem under a second line.
        used = {group for artifact in artifacts for group in artifact.groups}
        for group in sorted(set(groups) - used):
            problems.append(f"group {group} has no artifacts")
    if problems:
        raise ManifestError(path, problems)
    return Manifest(path=path, groups=groups, artifacts=tuple(artifacts))


def _one_line(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and "\n" not in value.strip()


def _parse_entry(entry: Any, index: int, groups: Mapping[str, str],
                 problems: list[str]) -> Artifact | None:
    if not isinstance(entry, dict):
        problems.append(f"artifact entry {index} must be a mapping")
        return None
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        problems.append(f"artifact entry {index}: name {name!r} must match {_NAME.pattern}")
        return None
    where = f"artifact {name}"
    before = len(problems)
    for key in sorted(set(entry) - _ENTRY_KEYS, key=str):
        problems.append(f"{where}: unknown key {key!r} "
                        f"(allowed: {', '.join(sorted(_ENTRY_KEYS))})")

    url = entry.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        problems.append(f"{where}: url must be an http(s) URL, got {url!r}")
        url = ""

    file = entry.get("file")
    if file is None and parts is not None:
        # PyPI file URLs end in the file name; saying it twice invites typos.
        file = unquote(parts.path.rsplit("/", 1)[-1])
    if not isinstance(file, str) or not _FILE.fullmatch(file):
        problems.append(f"{where}: file {file!r} must be a plain file name matching "
                        f"{_FILE.pattern}")

    sha256 = entry.get("sha256")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        got = (f"{len(sha256)} characters" if isinstance(sha256, str)
               else f"{type(sha256).__name__} {sha256!r}")
        problems.append(f"{where}: sha256 must be 64 hexadecimal digits, got {got}")

    size = entry.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        problems.append(f"{where}: size must be a positive number of bytes, got {size!r}")

    entry_groups = entry.get("groups")
    if (not isinstance(entry_groups, list) or not entry_groups
            or not all(isinstance(g, str) for g in entry_groups)):
        problems.append(f"{where}: groups must be a non-empty list of group names")
        entry_groups = []
    for group in entry_groups:
        if group not in groups:
            problems.append(f"{where}: unknown group {group!r} "
                            f"(defined: {', '.join(sorted(groups)) or 'none'})")

    for key in ("license", "how", "note"):
        # Error messages quote these verbatim and must stay one line.
        if key in entry and not _one_line(entry[key]):
            problems.append(f"{where}: {key} must be one line of text")

    git = _parse_git(entry.get("git"), where, problems) if "git" in entry else None
    if git is not None and isinstance(file, str):
        command = git.archive_command(file)
        if not isinstance(entry.get("how"), str) or command not in entry["how"]:
            # The how text is what a partner without the mirror follows: it must
            # carry exactly the command the pin was computed with.
            problems.append(f"{where}: how must contain the command `{command}`")

    if len(problems) > before:
        return None
    return Artifact(
        name=name,
        file=file,
        url=url,
        sha256=sha256.lower(),
        size=size,
        groups=tuple(entry_groups),
        license=_strip(entry.get("license")),
        how=_strip(entry.get("how")),
        note=_strip(entry.get("note")),
        git=git,
    )


def _parse_git(raw: Any, where: str, problems: list[str]) -> GitSource | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: git must be a mapping with repository, commit and prefix")
        return None
    for key in sorted(set(raw) - _GIT_KEYS, key=str):
        problems.append(f"{where}: unknown git key {key!r}")
    repository, commit, prefix = raw.get("repository"), raw.get("commit"), raw.get("prefix")
    ok = True
    if not isinstance(repository, str) or not repository:
        problems.append(f"{where}: git.repository must be a clone URL")
        ok = False
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        problems.append(f"{where}: git.commit must be a full 40-digit lowercase commit id")
        ok = False
    if not isinstance(prefix, str) or not prefix.endswith("/") or "/" in prefix[:-1]:
        problems.append(f"{where}: git.prefix must be one directory name ending in /")
        ok = False
    return GitSource(repository, commit, prefix) if ok else None


def _strip(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) else None
