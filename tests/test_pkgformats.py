# SPDX-License-Identifier: Apache-2.0
"""The probe-daemon .deb and .ipk: structure and metadata against the formats' own tools,
reproducibility, the service scripts, and (slow) a real install into a Debian 12 root."""

import configparser
import contextlib
import gzip
import hashlib
import io
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from pkgformats import deb, ipk, openwrt
from pkgformats.archive import source_date_epoch
from pkgformats.errors import BuildError
from pkgformats.tree import LIB_DIR, OPENWRT_CONFIG, build_tree
from tests.conftest import REPO
from tests.support.debian_root import debian_root_tarball as support_debian_root_tarball

EPOCH = 1_700_000_000
VERSION = "0.1.0"
PACKAGING = REPO / "packaging" / "probe-daemon"
DAEMON_SOURCES = sorted(p.relative_to(REPO).as_posix()
                        for p in (REPO / "probe_daemon").rglob("*.py")
                        if "__pycache__" not in p.parts)
HAVE_CLI = (REPO / "probe_daemon" / "cli.py").is_file()


def run(*command: str | Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    if check:
        assert result.returncode == 0, (f"{command} exited {result.returncode}\n"
                                        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (apt-get install {tool})")
    return path


def build(fmt: str, out: Path, source: Path = REPO, epoch: int = EPOCH,
          version: str = VERSION) -> Path:
    target = {"deb": "debian", "ipk": "openwrt"}[fmt]
    package = build_tree(target, source, version, epoch)
    return {"deb": deb.build, "ipk": ipk.build}[fmt](package, out, epoch)


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("packages")
    return {fmt: build(fmt, out) for fmt in ("deb", "ipk")}


# --- .deb against dpkg-deb, ar and lintian ------------------------------------------------


def test_deb_is_an_ar_archive_with_members_in_dpkg_order(packages):
    need("ar")
    assert run("ar", "t", packages["deb"]).stdout.split() == [
        "debian-binary", "control.tar.xz", "data.tar.xz"]
    assert run("ar", "p", packages["deb"], "debian-binary").stdout == "2.0\n"
    assert packages["deb"].name == f"probe-daemon_{VERSION}_all.deb"


def test_deb_control_fields(packages):
    fields = ["Package", "Version", "Architecture", "Maintainer", "Installed-Size",
              "Pre-Depends", "Depends", "Section", "Priority"]
    values = run("dpkg-deb", "--field", packages["deb"], *fields).stdout
    parsed = dict(line.split(": ", 1) for line in values.splitlines())
    assert parsed["Package"] == "probe-daemon"
    assert parsed["Version"] == VERSION
    assert parsed["Architecture"] == "all"
    assert parsed["Depends"] == "python3 (>= 3.11)"
    assert parsed["Pre-Depends"].startswith("init-system-helpers")
    assert re.fullmatch(r".+ <[^@>]+@[^>]+>", parsed["Maintainer"])
    assert int(parsed["Installed-Size"]) > 0
    description = run("dpkg-deb", "--field", packages["deb"], "Description").stdout
    synopsis, *body = description.splitlines()
    assert "mPlane" in synopsis and len(synopsis) < 80
    assert body and all(line.startswith(" ") for line in body)


def test_deb_info_lists_control_members_and_scripts(packages):
    info = run("dpkg-deb", "--info", packages["deb"]).stdout
    for member in ("control", "md5sums", "conffiles", "preinst", "postinst", "prerm", "postrm"):
        assert re.search(rf"^\s+\d+ bytes,\s+\d+ lines\s+\*?\s+{member}\b", info, re.M), member


def _contents(deb_path: Path) -> dict[str, tuple[str, str, str]]:
    """dpkg-deb --contents as {path: (mode string, owner/group, date time)}."""
    listing = {}
    for line in run("dpkg-deb", "--contents", deb_path).stdout.splitlines():
        mode, owner, _size, day, clock, name = line.split(None, 5)
        listing[name.removeprefix(".").rstrip("/") or "/"] = (mode, owner, f"{day} {clock}")
    return listing


def test_deb_contents_paths_modes_owners_and_times(packages):
    listing = _contents(packages["deb"])
    expected = {
        "/usr/bin/probe-daemon": "-rwxr-xr-x",
        "/etc/mplane": "drwxr-xr-x",
        "/etc/mplane/certs": "drwx------",
        "/etc/mplane/probe.conf": "-rw-r--r--",
        "/etc/init.d/probe-daemon": "-rwxr-xr-x",
        "/lib/systemd/system/probe-daemon.service": "-rw-r--r--",
        f"{LIB_DIR}/probe_daemon": "drwxr-xr-x",
        "/usr/share/doc/probe-daemon/copyright": "-rw-r--r--",
    }
    for path, mode in expected.items():
        assert listing[path][0] == mode, path
    for source in DAEMON_SOURCES:
        assert listing[f"{LIB_DIR}/{source}"][0] == "-rw-r--r--", source
    assert not [p for p in listing if "__pycache__" in p or p.endswith(".pyc")]
    assert {owner for _mode, owner, _date in listing.values()} == {"root/root"}
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(EPOCH))
    assert {date for _mode, _owner, date in listing.values()} == {stamp}
    # tar --sort=name order: every directory right before its contents.
    names = list(listing)
    assert names == sorted(names, key=lambda p: tuple(p.split("/")))


def test_deb_md5sums_and_conffiles_match_the_data(packages, tmp_path):
    run("dpkg-deb", "--raw-extract", packages["deb"], tmp_path / "x")
    control = tmp_path / "x" / "DEBIAN"
    conffiles = control.joinpath("conffiles").read_text().split()
    assert conffiles == ["/etc/init.d/probe-daemon", "/etc/mplane/probe.conf"]
    md5sums = dict(reversed(line.split("  ", 1)) for line in
                   control.joinpath("md5sums").read_text().splitlines())
    files = {p.relative_to(tmp_path / "x").as_posix() for p in (tmp_path / "x").rglob("*")
             if p.is_file() and "DEBIAN" not in p.parts}
    # dh_md5sums: every file but the conffiles.
    assert set(md5sums) == files - {c.lstrip("/") for c in conffiles}
    for path, digest in md5sums.items():
        assert hashlib.md5((tmp_path / "x" / path).read_bytes()).hexdigest() == digest, path
    for script in ("preinst", "postinst", "prerm", "postrm"):
        assert stat.S_IMODE(control.joinpath(script).stat().st_mode) == 0o755


def test_deb_maintainer_scripts_are_posix_and_guarded(packages, tmp_path):
    run("dpkg-deb", "--control", packages["deb"], tmp_path)
    scripts = [tmp_path / name for name in ("preinst", "postinst", "prerm", "postrm")]
    for script in scripts:
        run("sh", "-n", script)
    if shutil.which("shellcheck"):
        run("shellcheck", "--shell=sh", *scripts)
    postinst = (tmp_path / "postinst").read_text()
    # debhelper's systemd handling, each helper guarded by its presence.
    for helper in ("deb-systemd-helper", "deb-systemd-invoke", "update-rc.d", "py3compile"):
        assert f"command -v {helper}" in postinst, helper
    assert "deb-systemd-helper enable 'probe-daemon.service'" in postinst
    assert "deb-systemd-helper purge 'probe-daemon.service'" in (tmp_path / "postrm").read_text()


@pytest.mark.slow  # a third of the fast tests' time budget on its own
def test_deb_lintian_reports_no_errors(packages):
    lintian = need("lintian")
    result = run(lintian, "--no-cfg", "--display-info", "--pedantic", packages["deb"],
                 check=False)
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    assert not [t for t in tags if t.startswith("E: ")], "\n".join(tags)
    # Known and accepted: the daemon has no man page yet (its --help is the reference).
    accepted = ("no-manual-page", "systemd-service-file-missing-documentation-key")
    unexpected = [t for t in tags if t.startswith("W: ") and not any(a in t for a in accepted)]
    assert not unexpected, "\n".join(tags)


# --- .ipk: unpacked with tar, control parsed as opkg parses it ----------------------------

# opkg (libopkg/pkg_parse.c, pkg_parse_line) switches on a control line's first character
# and takes the first field whose name is a *prefix* of the line (is_field is strncmp), in
# this order; a line starting with a space continues Description (or Conffiles). So
# "SourceName: x" is read as Source, as for every OpenWrt package; what must come out right
# are the fields opkg acts on.
OPKG_FIELDS = ("ABIVersion", "Alternatives", "Architecture", "Auto-Installed", "Conffiles",
               "Conflicts", "Description", "Depends", "Essential", "Filename",
               "Installed-Size", "Installed-Time", "MD5sum", "Maintainer", "Package",
               "Priority", "Provides", "Pre-Depends", "Recommends", "Replaces", "Section",
               "SHA256sum", "Size", "Source", "Status", "Suggests", "Tags", "Version")


def parse_as_opkg(text: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if not line.strip():
            break
        if line.startswith(" ") and current in ("Description", "Conffiles"):
            parsed[current] += "\n" + line[1:]
            continue
        current = next((f for f in OPKG_FIELDS if line.startswith(f)), None)
        if current is not None:
            parsed[current] = line[len(current) + 1:].strip()
    return parsed


def parse_depends(value: str) -> list[tuple[str, str]]:
    """opkg's parse_deplist: comma-separated 'name [(op version)]'."""
    deps = []
    for item in value.split(","):
        match = re.fullmatch(r"\s*([a-z0-9.+-]+)\s*(?:\(\s*([<>=]+)\s*([^)\s]+)\s*\))?\s*", item)
        assert match, f"unparsable dependency {item!r}"
        deps.append((match.group(1), f"{match.group(2)} {match.group(3)}"
                     if match.group(2) else ""))
    return deps


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return {m.name: m for m in tar.getmembers()}


def _read(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        member = tar.extractfile(name)
        assert member is not None, name
        return member.read()


@pytest.fixture(scope="module")
def unpacked_ipk(packages, tmp_path_factory) -> Path:
    """The .ipk unpacked with tar(1), as a person (or opkg's own untar) would."""
    where = tmp_path_factory.mktemp("ipk")
    run("tar", "-xzf", packages["ipk"], "-C", where)
    for inner in ("control", "data"):
        (where / inner).mkdir()
        run("tar", "-xzf", where / f"{inner}.tar.gz", "-C", where / inner)
    return where


def test_ipk_is_a_gzipped_tar_not_ar_with_ipkg_build_member_order(packages):
    raw = packages["ipk"].read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[9] == 3  # gzip, OS byte Unix as `gzip -n`
    listing = run("tar", "-tzvf", packages["ipk"]).stdout.splitlines()
    assert [line.split()[-1] for line in listing] == [
        "./debian-binary", "./data.tar.gz", "./control.tar.gz"]
    for member in _members(raw).values():
        # ipkg-build: tar --format=gnu --numeric-owner --mtime=SOURCE_DATE_EPOCH.
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert member.mtime == EPOCH
    assert _read(raw, "./debian-binary") == b"2.0\n"
    assert packages["ipk"].name == f"probe-daemon_{VERSION}_all.ipk"


def test_ipk_control_fields_as_opkg_reads_them(unpacked_ipk):
    control = parse_as_opkg((unpacked_ipk / "control" / "control").read_text())
    assert control["Package"] == "probe-daemon"
    assert control["Version"] == VERSION
    assert control["Architecture"] == "all"
    assert control["Section"] == "net"
    assert control["Maintainer"]
    description = control["Description"].splitlines()
    assert "mPlane" in description[0] and len(description) > 1
    # ipkg-build: Installed-Size is the uncompressed data tar in bytes.
    data_tar = gzip.decompress((unpacked_ipk / "data.tar.gz").read_bytes())
    assert int(control["Installed-Size"]) == len(data_tar)
    depends = dict(parse_depends(control["Depends"]))
    assert next(iter(depends)) == "python3-light" and depends["python3-light"] == ">= 3.11"
    # What the daemon's contract needs on OpenWrt's split Python (see pkgformats/openwrt.py).
    for name in ("python3-logging", "python3-openssl", "python3-email", "python3-urllib",
                 "python3-xml"):
        assert name in depends, name
    assert all(name.startswith("python3-") for name in depends)
    # Fields opkg reads by prefix would be shadowed by a longer field listed earlier.
    raw = dict(line.split(": ", 1) for line in
               (unpacked_ipk / "control" / "control").read_text().splitlines()
               if not line.startswith(" "))
    assert raw["SourceName"] == "probe-daemon" and raw["License"] == "Apache-2.0"
    assert raw["Source"] == "feeds/probeforge/probe-daemon"
    assert raw["SourceDateEpoch"] == str(EPOCH)


def test_ipk_control_members_follow_openwrt_package_pack(unpacked_ipk):
    control = unpacked_ipk / "control"
    assert sorted(p.name for p in control.iterdir()) == [
        "conffiles", "control", "postinst", "prerm", "prerm-pkg"]
    assert (control / "conffiles").read_text() == "/etc/mplane/probe.conf\n"
    postinst = (control / "postinst").read_text()
    assert postinst.splitlines()[-1] == "default_postinst $0 $@"
    assert "IPKG_NO_SCRIPT" in postinst
    assert (control / "prerm").read_text().splitlines()[-1] == "default_prerm $0 $@"
    for script in ("postinst", "prerm", "prerm-pkg"):
        assert stat.S_IMODE((control / script).stat().st_mode) == 0o755
        run("sh", "-n", control / script)
    if shutil.which("shellcheck"):
        run("shellcheck", "--shell=sh", control / "prerm-pkg")
    for conffile in (control / "conffiles").read_text().split():
        assert (unpacked_ipk / "data" / conffile.lstrip("/")).is_file()


def test_ipk_data_tree_and_openwrt_specifics(packages, unpacked_ipk):
    members = _members(gzip.decompress((unpacked_ipk / "data.tar.gz").read_bytes()))
    modes = {name.removeprefix(".").rstrip("/") or "/": stat.filemode(m.mode | (
        stat.S_IFDIR if m.isdir() else stat.S_IFREG)) for name, m in members.items()}
    assert modes["/usr/bin/probe-daemon"] == "-rwxr-xr-x"
    assert modes["/etc/init.d/probe-daemon"] == "-rwxr-xr-x"
    assert modes["/etc/mplane/certs"] == "drwx------"
    assert modes["/etc/mplane/spool"] == "drwx------"
    assert all((m.uid, m.gid, m.mtime) == (0, 0, EPOCH) for m in members.values())
    data = unpacked_ipk / "data"
    init_script = (data / "etc/init.d/probe-daemon").read_bytes()
    assert init_script == (PACKAGING / "openwrt-init").read_bytes()
    assert (data / "lib/upgrade/keep.d/probe-daemon").read_text() == "/etc/mplane/\n"
    config = configparser.ConfigParser(interpolation=None)
    config.read(data / "etc/mplane/probe.conf")
    assert dict(config["daemon"]) | OPENWRT_CONFIG == dict(config["daemon"])
    assert not [p for p in data.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc"]


def test_deb_and_ipk_install_the_same_daemon(packages, unpacked_ipk, tmp_path):
    run("dpkg-deb", "--extract", packages["deb"], tmp_path)
    ipk_data = unpacked_ipk / "data"
    for relative in ["usr/bin/probe-daemon", *(f"{LIB_DIR[1:]}/{s}" for s in DAEMON_SOURCES)]:
        assert (tmp_path / relative).read_bytes() == (ipk_data / relative).read_bytes(), relative
    deb_conf = (tmp_path / "etc/mplane/probe.conf").read_text().splitlines()
    ipk_conf = (ipk_data / "etc/mplane/probe.conf").read_text().splitlines()
    changed = {a.split("=")[0].strip() for a, b in zip(deb_conf, ipk_conf, strict=True) if a != b}
    assert changed == set(OPENWRT_CONFIG)


@pytest.mark.skipif(not (os.environ.get("OPKG") or shutil.which("opkg") or shutil.which("opkg-cl")),
                    reason="opkg not installed (build OpenWrt's opkg-lede and set OPKG=/path "
                           "to it); parse_as_opkg stands in for it")
def test_ipk_installs_and_removes_with_real_opkg(packages, tmp_path):
    opkg = os.environ.get("OPKG") or shutil.which("opkg") or shutil.which("opkg-cl")
    root = tmp_path / "root"
    (root / "usr/lib/opkg/info").mkdir(parents=True)
    (root / "var/lock").mkdir(parents=True)
    (root / "lib").mkdir()
    conf = tmp_path / "opkg.conf"
    conf.write_text("dest root /\nlists_dir ext /var/opkg-lists\narch all 100\n"
                    "arch mips_24kc 200\n")
    # The Python packages as if installed from the OpenWrt feed, to resolve Depends against.
    status = []
    for name in ("python3-light", "python3-email", "python3-logging", "python3-openssl",
                 "python3-urllib", "python3-xml"):
        status.append(f"Package: {name}\nVersion: 3.11.10-r1\nStatus: install user installed\n"
                      "Architecture: mips_24kc\nInstalled-Time: 0\n")
        (root / f"usr/lib/opkg/info/{name}.list").write_text("")
    (root / "usr/lib/opkg/status").write_text("\n".join(status))
    # Stand-ins for base-files' default_postinst/default_prerm: record how they are called.
    (root / "lib/functions.sh").write_text(
        'default_postinst() { echo "postinst $*" >> "$IPKG_INSTROOT/calls"; }\n'
        'default_prerm() { echo "prerm $*" >> "$IPKG_INSTROOT/calls"; }\n')
    env = {**os.environ, "IPKG_INSTROOT": str(root)}
    base = [opkg, "-o", root, "-f", conf, "--force-postinstall"]
    run(*base, "install", packages["ipk"], env=env)
    status_text = (root / "usr/lib/opkg/status").read_text()
    assert re.search(r"Package: probe-daemon\nVersion: 0\.1\.0\n", status_text)
    assert re.search(r"Conffiles:\n /etc/mplane/probe\.conf [0-9a-f]{64}", status_text)
    assert (root / "usr/bin/probe-daemon").stat().st_mode & 0o777 == 0o755
    assert stat.S_IMODE((root / "etc/mplane/certs").stat().st_mode) == 0o700
    assert (root / "usr/lib/opkg/info/probe-daemon.prerm-pkg").is_file()
    run(*base, "remove", "probe-daemon", env=env)
    calls = (root / "calls").read_text().splitlines()
    assert calls[0].startswith("postinst ") and calls[0].endswith("probe-daemon.postinst configure")
    assert calls[1].startswith("prerm ") and calls[1].endswith("probe-daemon.prerm remove")
    assert not (root / "usr/bin/probe-daemon").exists()
    assert not (root / "etc/mplane/probe.conf").exists()


# --- reproducibility and the command line -------------------------------------------------


def test_builds_are_byte_for_byte_reproducible(tmp_path):
    for fmt in ("deb", "ipk"):
        first = build(fmt, tmp_path / "a").read_bytes()
        second = build(fmt, tmp_path / "b").read_bytes()
        assert first == second, fmt
        assert build(fmt, tmp_path / "c", epoch=EPOCH + 1).read_bytes() != first, fmt


def test_build_ignores_the_checkouts_mtimes_modes_and_caches(packages, tmp_path):
    copy = tmp_path / "src"
    for part in ("probe_daemon", "packaging"):
        shutil.copytree(REPO / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    for path in copy.rglob("*"):
        if path.is_file():
            path.chmod(0o600)
            os.utime(path, (123456789, 123456789))
    cache = copy / "probe_daemon" / "__pycache__"
    cache.mkdir()
    (cache / "cli.cpython-311.pyc").write_bytes(b"stale")
    for fmt in ("deb", "ipk"):
        assert build(fmt, tmp_path / "out", source=copy).read_bytes() == \
            packages[fmt].read_bytes(), fmt


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "pkgformats", *args, check=False, cwd=REPO,
               env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH), **(env or {})})


def test_cli_prints_the_package_path_and_matches_the_api(packages, tmp_path):
    for fmt in ("deb", "ipk"):
        result = _cli("build", "--format", fmt, "--version", VERSION, "--out", str(tmp_path))
        assert result.returncode == 0, result.stderr
        path = Path(result.stdout.strip())
        assert path.parent == tmp_path and path.read_bytes() == packages[fmt].read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(("args", "env", "fix"), [
    (["--version", "1.0:bad"], {}, "version"),
    (["--version", "1.0", "--source", "/nonexistent"], {}, "--source"),
    (["--version", "1.0"], {"SOURCE_DATE_EPOCH": "yesterday"}, "SOURCE_DATE_EPOCH"),
])
def test_cli_errors_are_one_line_naming_the_fix(tmp_path, args, env, fix):
    result = _cli("build", "--format", "deb", "--out", str(tmp_path), *args, env=env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and fix in result.stderr, result.stderr


def test_cli_usage_errors_are_one_line_too(tmp_path):
    result = _cli("build", "--format", "rpm", "--out", str(tmp_path))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr


def test_epoch_comes_from_git_when_not_set(monkeypatch, tmp_path):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    if (REPO / ".git").exists():
        assert source_date_epoch(REPO) > 1_600_000_000
    with pytest.raises(BuildError, match="SOURCE_DATE_EPOCH"):
        source_date_epoch(tmp_path)


# --- OpenWrt Python dependency mapping ----------------------------------------------------


@pytest.mark.parametrize(("module", "packages"), [
    ("json", ()),
    ("socket", ()),
    ("logging.handlers", ("python3-logging",)),
    ("ssl", ("python3-openssl",)),
    ("http.client", ("python3-email", "python3-urllib")),
    ("urllib.parse", ("python3-urllib",)),
    ("xml.etree.ElementTree", ("python3-xml",)),
    ("sqlite3", ("python3-sqlite3",)),
    ("probe_daemon.cli", ()),
])
def test_openwrt_packages_for_modules(module, packages):
    assert openwrt.packages_for(module) == packages


@pytest.mark.parametrize("module", ["requests", "tkinter"])
def test_openwrt_refuses_what_no_openwrt_package_has(module):
    with pytest.raises(BuildError, match="remove"):
        openwrt.packages_for(module, "probe_daemon/x.py")


def test_openwrt_scan_sees_imports_inside_functions():
    source = "def f():\n    import sqlite3\n    from xml.dom import minidom\nfrom . import x\n"
    assert openwrt.imported_modules(source, "x.py") == {"sqlite3", "xml.dom"}


# --- packaging/ data ----------------------------------------------------------------------


def test_shell_scripts_are_shellcheck_clean():
    need("shellcheck")
    run("shellcheck", PACKAGING / "busybox-init", PACKAGING / "openwrt-init")
    for script in ("busybox-init", "openwrt-init"):
        assert os.access(PACKAGING / script, os.X_OK), script


def test_openwrt_init_uses_procd_as_asked():
    text = (PACKAGING / "openwrt-init").read_text()
    assert text.startswith("#!/bin/sh /etc/rc.common\n")
    for line in ("USE_PROCD=1", "START=95", "procd_set_param respawn",
                 'procd_set_param file "$CONFIG"', "procd_send_signal \"$NAME\" '*' HUP"):
        assert line in text, line


def test_systemd_unit_verifies():
    analyze = need("systemd-analyze")
    result = run(analyze, "verify", PACKAGING / "probe-daemon.service", check=False)
    # The only complaint allowed is that the daemon is not installed on this host.
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "/usr/bin/probe-daemon" not in line]
    assert not problems, problems


def test_example_config_matches_the_daemons_settings(tmp_path):
    settings = pytest.importorskip("probe_daemon.settings")
    registry = pytest.importorskip("probe_daemon.registry")
    config = configparser.ConfigParser(interpolation=None)
    config.read(PACKAGING / "probe.conf.example")
    known = {(s.section, s.name) for s in settings.SETTINGS}
    for section in ("mplane", "daemon"):
        for key in config[section]:
            assert (section, key) in known, f"[{section}] {key} is not a daemon setting"
    measurement_sections = set(config.sections()) - {"mplane", "daemon"}
    assert measurement_sections == set(registry.MEASUREMENT_MODULES)
    # Both shipped variants load in the daemon itself.
    for target in ("debian", "openwrt"):
        conf = build_tree(target, REPO, VERSION, EPOCH).file("/etc/mplane/probe.conf").data
        assert conf is not None
        path = tmp_path / f"probe.conf.{target}"
        path.write_bytes(conf)
        loaded = settings.load(path)
        assert str(loaded.spool_dir) == (OPENWRT_CONFIG["spool_dir"] if target == "openwrt"
                                         else "/var/lib/probe-daemon/spool")


FAKE_DAEMON = """#!/bin/sh
trap 'echo hup >> "{log}"' HUP
trap 'echo term >> "{log}"; exit 0' TERM
echo "start $*" >> "{log}"
while :; do sleep 1 & wait $!; done
"""


def _init_script(tmp_path: Path) -> tuple[Path, Path]:
    daemon = tmp_path / "probe-daemon"
    log = tmp_path / "daemon.log"
    daemon.write_text(FAKE_DAEMON.format(log=log))
    daemon.chmod(0o755)
    text = (PACKAGING / "busybox-init").read_text()
    for old, new in (("DAEMON=/usr/bin/probe-daemon", f"DAEMON={daemon}"),
                     ("PIDFILE=/var/run/probe-daemon.pid", f"PIDFILE={tmp_path}/pid"),
                     ("/etc/default/probe-daemon", f"{tmp_path}/default"),
                     ("/lib/lsb/init-functions", f"{tmp_path}/no-init-functions")):
        assert old in text, old
        text = text.replace(old, new)
    script = tmp_path / "init"
    script.write_text(text)
    # Site settings as /etc/default/probe-daemon holds them; no second spent watching.
    (tmp_path / "default").write_text("START_WAIT=0\n")
    return script, log


@pytest.mark.parametrize("variant", ["sh+start-stop-daemon", "busybox", "busybox-no-ssd"])
def test_busybox_init_starts_reloads_and_stops(tmp_path, variant):
    script, log = _init_script(tmp_path)
    env = dict(os.environ)
    shell = ["sh"]
    if variant.startswith("busybox"):
        busybox = need("busybox")
        # Only busybox applets on PATH, as on a busybox-init system.
        applets = tmp_path / "bin"
        applets.mkdir()
        names = ["sh", "rm", "tr", "grep", "sleep", "setsid", "cat"]
        if variant == "busybox":
            names.append("start-stop-daemon")
        for name in names:
            (applets / name).symlink_to(busybox)
        env["PATH"] = str(applets)
        shell = [str(applets / "sh")]
    elif not shutil.which("start-stop-daemon", path=env["PATH"] + ":/sbin:/usr/sbin"):
        pytest.skip("no start-stop-daemon")
    else:
        env["PATH"] += ":/sbin:/usr/sbin"

    def init(action: str) -> subprocess.CompletedProcess[str]:
        # As under an init system, whatever ran the tests (nohup ignores SIGHUP, and a shell
        # cannot trap a signal ignored on entry).
        return run(*shell, script, action, check=False, env=env, timeout=60,
                   preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))

    try:
        assert init("status").returncode == 3
        started = init("start")
        assert started.returncode == 0, started.stdout + started.stderr
        pid = int((tmp_path / "pid").read_text())
        assert init("start").stdout.strip().endswith(f"already running (pid {pid})")
        assert init("status").returncode == 0
        assert init("reload").returncode == 0
        deadline = time.monotonic() + 5
        while "hup" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert init("stop").returncode == 0
        assert log.read_text().split("\n")[1:3] == ["hup", "term"]
        assert log.read_text().startswith(
            "start --config /etc/mplane/probe.conf --log-target syslog\n")
        assert not (tmp_path / "pid").exists()
        assert init("status").returncode == 3
    finally:
        if (tmp_path / "pid").exists():
            pid = int((tmp_path / "pid").read_text())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


# --- slow: the .deb installed into a real Debian 12 root ----------------------------------

# Built once and cached by tests/support/debian_root.py (skips unless root with mmdebstrap).
ROOT_PACKAGES = ("python3-minimal", "python3")


def debian_root_tarball() -> Path:
    """A minbase bookworm root with Python as a tarball, built once per inputs."""
    return support_debian_root_tarball(ROOT_PACKAGES, name="python3")


def _tree(root: Path) -> set[str]:
    """Every path in the root but dpkg's and the helpers' own bookkeeping."""
    ignored = ("var/lib/dpkg/", "var/log/", "var/cache/", "var/lib/systemd/deb-systemd-helper")
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if not p.relative_to(root).as_posix().startswith(ignored)}


@pytest.fixture(scope="module")
def debian_root(packages, tmp_path_factory):
    tarball = debian_root_tarball()
    root = tmp_path_factory.mktemp("debian-root", numbered=True) / "root"
    root.mkdir()
    try:
        run("tar", "-xf", tarball, "-C", root)
        # Maintainer scripts run chrooted in the root: nothing may start there for real.
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        before = _tree(root)
        run("dpkg", f"--root={root}", "--install", packages["deb"])
        yield root, before
    finally:
        # 200+ MB: never leave it to pytest's retention of old temporary directories.
        shutil.rmtree(root, ignore_errors=True)


def _query(root: Path, fmt: str) -> str:
    return run("dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", f"-f={fmt}",
               "probe-daemon").stdout


@pytest.mark.slow
def test_deb_installs_into_debian_12(debian_root):
    root, _before = debian_root
    assert _query(root, "${Status} ${Version}") == f"install ok installed {VERSION}"
    conffiles = _query(root, "${Conffiles}")
    assert re.search(r"^ /etc/mplane/probe\.conf [0-9a-f]{32}$", conffiles, re.M), conffiles
    assert re.search(r"^ /etc/init\.d/probe-daemon [0-9a-f]{32}$", conffiles, re.M), conffiles
    modes = {"usr/bin/probe-daemon": 0o755, "etc/mplane/certs": 0o700,
             "etc/mplane/probe.conf": 0o644, "etc/init.d/probe-daemon": 0o755,
             "lib/systemd/system/probe-daemon.service": 0o644}
    for path, mode in modes.items():
        assert stat.S_IMODE((root / path).lstat().st_mode) == mode, path
    # deb-systemd-helper enabled the unit, update-rc.d made the sysv links,
    # py3compile compiled the modules for the root's own Python.
    wants = root / "etc/systemd/system/multi-user.target.wants/probe-daemon.service"
    assert os.readlink(wants) == "/lib/systemd/system/probe-daemon.service"
    assert list((root / "etc/rc2.d").glob("S*probe-daemon"))
    assert list((root / LIB_DIR[1:] / "probe_daemon/__pycache__").glob("cli.cpython-3*.pyc"))


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_CLI, reason="probe_daemon/cli.py not written yet")
def test_installed_daemon_runs_in_debian_12(debian_root):
    root, _before = debian_root
    result = run("chroot", root, "/usr/bin/probe-daemon", "--help")
    assert "--config" in result.stdout
    # The default configuration loads; --check then names the missing credentials.
    check = run("chroot", root, "/usr/bin/probe-daemon", "--config", "/etc/mplane/probe.conf",
                "--check", check=False)
    assert check.returncode == 1 and "/etc/mplane/certs/probe.key" in check.stdout, check


@pytest.mark.slow
def test_deb_remove_reinstall_and_purge_leave_nothing(debian_root, packages):
    root, before = debian_root
    run("dpkg", f"--root={root}", "--remove", "probe-daemon")
    assert not (root / LIB_DIR[1:]).exists()
    assert (root / "etc/mplane/probe.conf").is_file()  # conffiles stay until purge
    assert not os.access(root / "etc/init.d/probe-daemon", os.X_OK)
    run("dpkg", f"--root={root}", "--install", packages["deb"])
    assert os.access(root / "etc/init.d/probe-daemon", os.X_OK)
    run("dpkg", f"--root={root}", "--purge", "probe-daemon")
    assert _query_absent(root)
    leftovers = _tree(root) ^ before
    assert not leftovers, sorted(leftovers)


def _query_absent(root: Path) -> bool:
    result = run("dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "probe-daemon",
                 check=False)
    return result.returncode != 0 or result.stdout.strip() == "probe-daemon\t"
