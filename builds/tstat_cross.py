# SPDX-License-Identifier: Apache-2.0
"""Tstat cross-built on the controller for a MiniProbe (mipsel by default).

    python -m builds.tstat_cross build --source tstat-92523dc.tar.gz --out build/tstat-mipsel
    python -m builds.tstat_cross run --out build/tstat-mipsel -- -s OUT trace.pcap

``build`` resolves libpcap's development package and the runtime libraries it needs for the
target architecture from the Debian archive (a package list of its own, see
:mod:`builds.cross`), unpacks them into a sysroot, runs the source's ``autogen.sh`` and
``configure --host=<triplet>``, ``make`` and ``make install DESTDIR=``, strips the binary,
checks it is an ELF of the target architecture and writes the staged install tree as
``<out>/tstat-<arch>.tar.gz`` (``./usr/local/bin/tstat``; the firmware build unpacks it).
A record of what the build was made from (``<out>/build.json``: source SHA-256, options,
toolchain, .debs) makes a repeated call with the same inputs a no-op (``"changed": false``).

``run`` executes the staged binary under ``qemu-<arch>-static -L <sysroot>``: offline
analysis of a pcap only (qemu-user cannot list network devices for libpcap).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, NoReturn

from builds import BuildError
from builds.cross import (
    DEFAULT_MIRROR,
    TRIPLETS,
    ForeignArchive,
    autotools_build,
    check_elf,
    check_needed,
    check_toolchain,
    make_sysroot,
    pack_tree,
    qemu_command,
    run,
    sha256_file,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]
# Bump when the way Tstat is built changes: every earlier build is then redone.
FORMAT = 1
# What Tstat links against (its C++ parts need libstdc++); configure options that need more
# add their -dev package.
BASE_PACKAGES = ("libpcap0.8-dev", "libstdc++6")
OPTION_PACKAGES = {"--enable-zlib": "zlib1g-dev", "--enable-ldns": "libldns-dev",
                   "--enable-openssl": "libssl-dev"}
BINARY = Path("usr/local/bin/tstat")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tstat_cross: error: {message} (see --help)\n")


def _toolchain_version(gcc: str) -> str:
    return subprocess.run([gcc, "-dumpfullversion"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _unpack_source(tarball: Path, work: Path) -> Path:
    """Unpack ``tarball`` into a fresh ``work`` and return its single top-level directory."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(work, filter="data")
    tops = [p for p in work.iterdir()]
    if len(tops) != 1 or not tops[0].is_dir():
        raise BuildError(f"{tarball} must hold one top directory (git archive --prefix=…/)")
    return tops[0]


def build(source: Path, out: Path, *, arch: str = "mipsel", cache: Path | None = None,
          mirror: str = DEFAULT_MIRROR, suite: str = "bookworm",
          configure_args: tuple[str, ...] = (), cflags: str = "-O2",
          extra_packages: tuple[str, ...] = (), strip: bool = True,
          refresh_lists: bool = False) -> dict[str, Any]:
    """Cross-build Tstat from the source tarball ``source`` into ``out``; see the module doc."""
    if arch not in TRIPLETS:
        raise BuildError(f"unknown architecture {arch!r} (known: {', '.join(TRIPLETS)})")
    if not source.is_file():
        raise BuildError(f"no source tarball {source}")
    triplet = TRIPLETS[arch]
    tools = check_toolchain(triplet, arch)
    cache = (cache or REPO / ".cache" / "cross") / arch
    out.mkdir(parents=True, exist_ok=True)
    tarball = out / f"tstat-{arch}.tar.gz"
    record = out / "build.json"

    archive = ForeignArchive(arch, cache / "apt", mirror=mirror, suite=suite)
    archive.update(force=refresh_lists)
    wanted = [*BASE_PACKAGES, *(OPTION_PACKAGES[a] for a in configure_args
                                if a in OPTION_PACKAGES), *extra_packages]
    packages = archive.closure(wanted)
    try:
        debs = archive.download(packages, cache / "debs")
    except BuildError:
        # A package list older than the mirror names versions it no longer has.
        archive.update(force=True)
        packages = archive.closure(wanted)
        debs = archive.download(packages, cache / "debs")

    inputs = {"format": FORMAT, "source_sha256": sha256_file(source), "arch": arch,
              "configure_args": list(configure_args), "cflags": cflags, "strip": strip,
              "toolchain": _toolchain_version(tools["gcc"]), "debs": [d.name for d in debs]}
    if record.is_file() and tarball.is_file():
        previous = json.loads(record.read_text())
        if previous.get("inputs") == inputs and previous.get("sha256") == sha256_file(tarball):
            return {**previous, "changed": False}

    sysroot = cache / "sysroot"
    make_sysroot(debs, sysroot)
    log = out / "build.log"
    log.write_text("")
    work = out / "work"
    tree = _unpack_source(source, work)
    stage = out / "stage"
    autotools_build(tree, triplet=triplet, sysroot=sysroot, stage=stage, log=log,
                    configure_args=configure_args, cflags=cflags)
    binary = stage / BINARY
    if not binary.is_file():
        raise BuildError(f"make install put no {BINARY} into {stage} (log: {log})")
    if strip:
        run([tools["strip"], binary], what="strip")
    elf = check_elf(binary, arch)
    elf["needed"] = check_needed(binary, triplet, sysroot)
    pack_tree(stage, tarball)
    shutil.rmtree(work)
    result = {"inputs": inputs, "tarball": str(tarball), "sha256": sha256_file(tarball),
              "binary": str(binary), "sysroot": str(sysroot), "elf": elf, "arch": arch,
              "log": str(log)}
    write_json(record, result)
    return {**result, "changed": True}


def run_staged(out: Path, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run the staged binary of the build in ``out`` under qemu-user with ``args``."""
    record = out / "build.json"
    if not record.is_file():
        raise BuildError(f"no build in {out}: run `python -m builds.tstat_cross build` first")
    built = json.loads(record.read_text())
    command = qemu_command(built["arch"], Path(built["sysroot"]), Path(built["binary"]), *args)
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m builds.tstat_cross", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    b = commands.add_parser("build", help="cross-build Tstat and stage it as a tarball")
    b.add_argument("--source", required=True, type=Path,
                   help="the source tarball (git archive with one top directory)")
    b.add_argument("--out", required=True, type=Path, help="output directory")
    b.add_argument("--arch", default="mipsel", choices=sorted(TRIPLETS),
                   help="Debian architecture (default mipsel)")
    b.add_argument("--cache", type=Path,
                   help=f"package list, .debs and sysroot (default {REPO}/.cache/cross)")
    b.add_argument("--mirror", default=DEFAULT_MIRROR, help="Debian mirror (plain HTTP works)")
    b.add_argument("--suite", default="bookworm")
    b.add_argument("--configure-arg", action="append", default=[], dest="configure_args",
                   metavar="ARG", help="extra ./configure argument (repeatable)")
    b.add_argument("--cflags", default="-O2", help="CFLAGS (old releases need -fcommon)")
    b.add_argument("--package", action="append", default=[], dest="packages",
                   help="another -dev package of the target architecture for the sysroot")
    b.add_argument("--no-strip", action="store_false", dest="strip")
    b.add_argument("--refresh-lists", action="store_true",
                   help="fetch the package list even if the cached one is recent")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    r = commands.add_parser("run", help="run the staged binary under qemu-user")
    r.add_argument("--out", required=True, type=Path, help="output directory of a build")
    r.add_argument("args", nargs=argparse.REMAINDER, help="-- then Tstat's arguments")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            tstat_args = args.args[1:] if args.args[:1] == ["--"] else args.args
            done = run_staged(args.out, tstat_args)
            sys.stdout.write(done.stdout)
            sys.stderr.write(done.stderr)
            return done.returncode
        result = build(args.source.resolve(), args.out.resolve(), arch=args.arch,
                       cache=args.cache.resolve() if args.cache else None, mirror=args.mirror,
                       suite=args.suite, configure_args=tuple(args.configure_args),
                       cflags=args.cflags, extra_packages=tuple(args.packages),
                       strip=args.strip, refresh_lists=args.refresh_lists)
    except BuildError as exc:
        print(f"tstat_cross: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True) if args.json else result["tarball"])
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
