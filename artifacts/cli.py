# SPDX-License-Identifier: Apache-2.0
"""probeforge-artifacts: the cache of pinned upstream files from the command line.

Exit status: 0 success; 1 an artifact is missing, corrupt or could not be
fetched (one line each, naming the file and the fix); 2 a usage or manifest
error. Errors go to stderr as ``probeforge-artifacts: error: <problem>: <fix>``.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from artifacts.cache import CACHE_ENV, CLI, Cache, resolve_cache_dir
from artifacts.errors import ArtifactError, FetchError, ManifestError, UnknownArtifactError
from artifacts.manifest import MANIFEST_ENV, Artifact, Manifest, load_manifest
from artifacts.store import DEFAULT_TIMEOUT, MIRROR_ENV, add, fetch, resolve_mirrors

EXIT_PROBLEM = 1
EXIT_USAGE = 2


def _error(message: str) -> None:
    print(f"{CLI}: error: {message}", file=sys.stderr)


def _count(number: int) -> str:
    return f"{number} artifact" + ("" if number == 1 else "s")


def _size(value: int | None) -> str:
    return "?" if value is None else str(value)


def _list(manifest: Manifest, cache: Cache, artifacts: Sequence[Artifact]) -> int:
    print(f"cache: {cache.directory}")
    print(f"manifest: {manifest.path}")
    rows = [("NAME", "FILE", "SIZE", "STATE", "GROUPS")]
    for artifact in artifacts:
        status = cache.status(artifact)
        rows.append((artifact.name, artifact.file, _size(artifact.size), status.state,
                     ",".join(artifact.groups)))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  "
              f"{row[3]:<{widths[3]}}  {row[4]}")
    # Listing is informational; `check` is the command whose status means something.
    return 0


def _check(cache: Cache, artifacts: Sequence[Artifact], group: str | None) -> int:
    problems = [status for status in map(cache.status, artifacts) if not status.ok]
    what = f"group {group}" if group else "all groups"
    for status in problems:
        print(status.message)
    if problems:
        print(f"cache {cache.directory} is incomplete for {what}: {len(problems)} of "
              f"{_count(len(artifacts))} missing or corrupt", file=sys.stderr)
        return EXIT_PROBLEM
    print(f"cache {cache.directory} is complete for {what}: {_count(len(artifacts))} verified")
    return 0


def _fetch(cache: Cache, artifacts: Sequence[Artifact], mirrors: list[str],
           timeout: float) -> int:
    failed: list[FetchError] = []

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    done = fetch(cache, artifacts, mirrors, timeout=timeout, log=log, on_error=failed.append)
    for item in done:
        if item.source is None:
            print(f"{item.artifact.name}: {item.artifact.file} already in the cache, verified")
        else:
            replaced = f" (replaced a bad copy: {item.replaced})" if item.replaced else ""
            print(f"{item.artifact.name}: fetched {item.artifact.file} from {item.source}, "
                  f"verified{replaced}")
    for error in failed:
        _error(str(error))
    return EXIT_PROBLEM if failed else 0


def _path(cache: Cache, artifacts: Sequence[Artifact]) -> int:
    paths = []
    for artifact in artifacts:
        # All or nothing: a script reading the paths must not get a partial list.
        paths.append(cache.verified_path(artifact))
    for path in paths:
        print(path)
    return 0


def _add(cache: Cache, manifest: Manifest, file: str, name: str | None) -> int:
    item = add(cache, manifest, Path(file).expanduser(), name)
    if item.source is None:
        print(f"{item.artifact.name}: {item.artifact.file} already in the cache, verified")
    else:
        replaced = f" (replaced a bad copy: {item.replaced})" if item.replaced else ""
        print(f"{item.artifact.name}: added {item.artifact.file}, verified{replaced}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # --cache/--manifest are accepted before or after the subcommand; the
    # subcommand's copy defaults to SUPPRESS so it does not erase the other.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache", metavar="DIR", default=argparse.SUPPRESS,
                        help=f"cache directory (default: ${CACHE_ENV}, else "
                        "~/.cache/probeforge/artifacts)")
    common.add_argument("--manifest", metavar="FILE", default=argparse.SUPPRESS,
                        help=f"manifest (default: ${MANIFEST_ENV}, else the one shipped "
                        "with probeforge)")
    parser = argparse.ArgumentParser(prog=CLI, description=__doc__.splitlines()[0],
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", parents=[common],
                       help="what a build needs: name, file, size, present/missing/corrupt")
    p.add_argument("--group", help="only this group")

    p = sub.add_parser("fetch", parents=[common],
                       help="download missing or corrupt files: mirrors first, then upstream")
    p.add_argument("names", nargs="*", metavar="NAME", help="artifacts (default: all)")
    p.add_argument("--group", help="every artifact of this group")
    p.add_argument("--mirror", action="append", default=[], metavar="URL",
                   help=f"base URL (or directory) holding the files by name, tried before "
                   f"upstream; repeatable (default: ${MIRROR_ENV}, space-separated)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="give up on a source that sends nothing for this long")

    p = sub.add_parser("check", parents=[common],
                       help="verify the cache is complete; exit 1 listing what is not")
    p.add_argument("--group", help="only this group")

    p = sub.add_parser("path", parents=[common],
                       help="print the verified absolute path of each artifact (for scripts)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--group", help="every artifact of this group")

    p = sub.add_parser("add", parents=[common],
                       help="copy a file obtained out of band into the cache, if it verifies")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--name", help="the artifact it is (default: by file name, else by hash)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        manifest = load_manifest(getattr(args, "manifest", None))
    except ManifestError as exc:
        for line in exc.lines():
            _error(line)
        return EXIT_USAGE
    cache = Cache(resolve_cache_dir(getattr(args, "cache", None)))
    try:
        if args.command == "add":
            return _add(cache, manifest, args.file, args.name)
        if args.command == "path" and not args.names and args.group is None:
            raise UnknownArtifactError("path needs artifact names or --group")
        artifacts = manifest.select(getattr(args, "names", ()), args.group)
        if args.command == "list":
            return _list(manifest, cache, artifacts)
        if args.command == "check":
            return _check(cache, artifacts, args.group)
        if args.command == "path":
            return _path(cache, artifacts)
        return _fetch(cache, artifacts, resolve_mirrors(args.mirror), args.timeout)
    except UnknownArtifactError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except ArtifactError as exc:
        _error(str(exc))
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        _error("interrupted: nothing half-written was left under a final name")
        return 130

