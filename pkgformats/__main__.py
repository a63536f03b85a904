# SPDX-License-Identifier: Apache-2.0
"""python -m pkgformats build --format deb|ipk [--version X] --out DIR: prints the package path."""

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import NoReturn

from pkgformats import deb, ipk
from pkgformats.archive import source_date_epoch
from pkgformats.errors import BuildError
from pkgformats.tree import DEFAULT_MAINTAINER, build_tree

REPO = Path(__file__).resolve().parents[1]
FORMATS = {"deb": ("debian", deb.build), "ipk": ("openwrt", ipk.build)}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other error of this tool, instead of argparse's usage block.
        self.exit(2, f"pkgformats: error: {message} (see --help)\n")


def daemon_version(source_root: Path) -> str:
    """probe_daemon.__version__, read without importing the daemon."""
    path = source_root / "probe_daemon" / "__init__.py"
    try:
        module = ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError) as exc:
        raise BuildError(f"cannot read the version from {path} ({exc}): pass --version") from None
    for node in module.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "__version__"
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    raise BuildError(f"{path} sets no __version__ string: pass --version")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pkgformats", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    build = commands.add_parser("build", help="build one package and print its path")
    build.add_argument("--format", required=True, choices=sorted(FORMATS),
                       help="deb: Debian/Ubuntu appliances; ipk: OpenWrt 24.10 MiniProbes")
    build.add_argument("--version", help="package version (default: probe_daemon.__version__)")
    build.add_argument("--out", required=True, type=Path, help="directory to write into")
    build.add_argument("--source", type=Path, default=REPO,
                       help=f"probeforge checkout to package (default {REPO})")
    build.add_argument("--json", action="store_true",
                       help='print {"path": ..., "changed": ...} (changed: false when an '
                            "identical package was already there)")
    build.add_argument("--maintainer", default=DEFAULT_MAINTAINER,
                       help=f"Maintainer field (default {DEFAULT_MAINTAINER!r})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        target, build = FORMATS[args.format]
        source = args.source.resolve()
        version = args.version or daemon_version(source)
        epoch = source_date_epoch(source)
        package = build_tree(target, source, version, epoch, args.maintainer)
        before = _stamps(args.out)
        path = build(package, args.out, epoch, args.maintainer)
    except BuildError as exc:
        print(f"pkgformats: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        changed = before.get(path.name) != _stamps(args.out).get(path.name)
        print(json.dumps({"path": str(path), "changed": changed}))
    else:
        print(path)
    return 0


def _stamps(directory: Path) -> dict[str, tuple[int, int]]:
    if not directory.is_dir():
        return {}
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir()}


if __name__ == "__main__":
    sys.exit(main())
