# SPDX-License-Identifier: Apache-2.0
"""The shared base of the emulated MiniProbe's firmware (firmware/rootfs.py, recipe.py).

Fast tests check the recipe's validation, the dependency resolver, the module closure and the
board's shell scripts. The slow ones build real bases from Debian bookworm mipsel packages
(downloaded once into ``.cache/firmware-test``, ~70 MB, reused by later runs): one without
Tstat (its artifact is not in an empty artifact cache), one with the Tstat stand-in of
``tests/support/upstream_fakes`` cross-built for mipsel, and a second build of the first into
a fresh cache that must give the same tree and the same squashfs bytes. The image's own
interpreter and busybox run under qemu-mipsel-static.
"""

import hashlib
import importlib.util
import json
import marshal
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from builds.cross import ForeignArchive, check_elf
from firmware import FirmwareError
from firmware.recipe import DEFAULT_RECIPE, load_recipe, parse_recipe
from firmware.rootfs import ModuleIndex, build_base, module_load_order
from rig.board import NIC_SLOT
from tests.conftest import tree_snapshot

REPO = Path(__file__).resolve().parents[1]
BOARD = "qemu-malta-mipsel"
BOARD_DIR = REPO / "images" / "openwrt" / "boards" / BOARD
TEST_CACHE = REPO / ".cache" / "firmware-test"
QEMU = shutil.which("qemu-mipsel-static")
PEM_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n:,-]{40,}")

needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-user-static not installed")


# --- recipe ------------------------------------------------------------------------------


def shipped() -> dict:
    return yaml.safe_load(DEFAULT_RECIPE.read_text())


def test_the_shipped_recipe_describes_the_emulated_board():
    recipe = load_recipe()
    assert recipe.version == "2026.11.0"
    board = recipe.board(BOARD)
    assert (board.arch, board.suite, board.qemu_machine, board.qemu_memory) == (
        "mipsel", "bookworm", "malta", 256)
    assert board.kernel == "linux-image-4kc-malta"  # a metapackage, never an ABI number
    assert {"busybox-static", "dropbear-bin", "python3-minimal"} <= set(board.packages)
    assert {"virtio_pci", "virtio_blk", "virtio_net", "loop", "squashfs", "overlay",
            "ext4"} <= set(board.modules)
    assert recipe.components["probe-daemon"].required
    assert recipe.components["tstat"].artifact == "tstat-source"
    assert not recipe.components["tstat"].required


def _broken(change) -> dict:
    data = shipped()
    change(data)
    return data


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("version"), "lacks 'version': add it"),
    (lambda d: d.update(version=2026.11), "version must be a non-empty string in quotes"),
    (lambda d: d.update(colour="blue"), "unknown key 'colour'"),
    (lambda d: d["boards"][BOARD]["qemu"].update(memory="lots"),
     "qemu.memory must be a whole number"),
    (lambda d: d["boards"][BOARD].update(arch="sparc"), "use one of mipsel"),
    (lambda d: d["boards"][BOARD].update(packages=[]), "packages must be a non-empty list"),
    (lambda d: d["boards"][BOARD].update(modules=["virtio net"]), "is malformed"),
    (lambda d: d["boards"][BOARD]["exclude"].append("busybox-static"),
     "in both packages and exclude: keep one"),
    (lambda d: d["boards"][BOARD]["component_packages"].update(glimpse=["x"]),
     "names no component of the recipe"),
    (lambda d: d["components"].update(ott={"required": True}), "use one of probe-daemon"),
    (lambda d: d["components"]["tstat"].pop("artifact"), "add `artifact:`"),
    (lambda d: d["components"]["probe-daemon"].update(required=False),
     "components.probe-daemon must have `required: true`"),
    (lambda d: d["components"].pop("probe-daemon"),
     "components must have probe-daemon with `required: true`"),
    (lambda d: d["boards"].clear(), "boards is empty"),
    (lambda d: d["boards"][BOARD].update(mirror="ftp://example"), "is malformed"),
])
def test_a_bad_recipe_is_one_line_naming_the_key_and_the_fix(change, message):
    with pytest.raises(FirmwareError) as caught:
        parse_recipe(_broken(change), Path("recipe.yml"))
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith("recipe.yml: ")
    assert message in text


def test_unreadable_and_malformed_recipe_files_are_one_line(tmp_path):
    with pytest.raises(FirmwareError, match="cannot read the recipe") as caught:
        load_recipe(tmp_path / "missing.yml")
    assert "\n" not in str(caught.value)
    bad = tmp_path / "recipe.yml"
    bad.write_text("version: [2026\nboards: {}\n")
    pattern = r"not valid YAML \(.* at line \d+\): fix the syntax"
    with pytest.raises(FirmwareError, match=pattern) as caught:
        load_recipe(bad)
    assert "\n" not in str(caught.value)


def test_an_unknown_board_names_the_known_ones():
    with pytest.raises(FirmwareError, match=r"no board 'wndr3800'.*qemu-malta-mipsel"):
        load_recipe().board("wndr3800")


# --- dependency resolution -----------------------------------------------------------------


class FakeArchive(ForeignArchive):
    """A package list in memory: name -> Depends, or (Pre-Depends, Depends)."""

    def __init__(self, depends: dict[str, str | tuple[str, str]]) -> None:
        super().__init__("mipsel", Path("/nonexistent"))
        self.depends = depends

    def show(self, names):
        records = {}
        for name in names:
            if name in self.depends:
                field = self.depends[name]
                pre, plain = field if isinstance(field, tuple) else ("", field)
                records[name] = {"Package": name, "Version": "1", "Architecture": "mipsel",
                                 "Filename": f"pool/{name}.deb", "SHA256": "0" * 64,
                                 "Depends": plain, "Pre-Depends": pre}
        return records


ARCHIVE: dict[str, str | tuple[str, str]] = {
    "python3-minimal": ("python3.11-minimal (>= 3.11.2-1~)", "dpkg (>= 1.13.20)"),
    "python3.11-minimal": "libpython3.11-minimal (= 3.11.2), libexpat1, zlib1g:any",
    "libpython3.11-minimal": "libc6 (>= 2.4), libssl3",
    "libpython3.11-stdlib": "media-types | mime-support, libffi8",
    "dpkg": "tar", "tar": "libacl1", "libacl1": "libc6",
    "libc6": "libgcc-s1", "libgcc-s1": "", "libexpat1": "", "zlib1g": "", "libssl3": "libc6",
    "media-types": "", "mime-support": "", "libffi8": "",
    "dropbear-bin": "libtomcrypt1, virtual-crypto | libtommath1, libc6",
    "libtomcrypt1": "", "libtommath1": "",
    "needs-virtual": "mail-transport-agent",
}


def test_the_full_closure_follows_every_dependency_but_the_excluded():
    names = [p.name for p in FakeArchive(ARCHIVE).closure(
        ["python3-minimal", "libpython3.11-stdlib", "dropbear-bin"], everything=True,
        exclude=["dpkg"])]
    assert names == sorted(["python3-minimal", "python3.11-minimal", "libpython3.11-minimal",
                            "libpython3.11-stdlib", "libc6", "libgcc-s1", "libexpat1",
                            "zlib1g", "libssl3", "media-types", "libffi8", "dropbear-bin",
                            "libtomcrypt1", "libtommath1"])
    assert "tar" not in names and "mime-support" not in names


def test_the_full_closure_refuses_what_only_a_virtual_package_could_give():
    with pytest.raises(Exception, match="needs-virtual depends on mail-transport-agent"):
        FakeArchive(ARCHIVE).closure(["needs-virtual"], everything=True)
    with pytest.raises(Exception, match="both wanted and excluded"):
        FakeArchive(ARCHIVE).closure(["dpkg"], everything=True, exclude=["dpkg"])


def test_the_default_closure_still_follows_runtime_libraries_only():
    names = [p.name for p in FakeArchive(ARCHIVE).closure(["python3.11-minimal"])]
    # Cross builds' sysroots: lib* packages only (zlib1g is not one), first alternatives.
    assert names == ["libc6", "libexpat1", "libgcc-s1", "libpython3.11-minimal", "libssl3",
                     "python3.11-minimal"]
    assert [p.name for p in FakeArchive(ARCHIVE).closure(["python3-minimal"])] == [
        "python3-minimal"]


# --- kernel modules ------------------------------------------------------------------------


def fake_modules(root: Path) -> Path:
    moddir = root / "lib" / "modules" / "6.1.0-9-test"
    moddir.mkdir(parents=True)
    (moddir / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n"
        "kernel/fs/jbd2/jbd2.ko:\nkernel/fs/mbcache.ko:\nkernel/lib/crc16.ko:\n"
        "kernel/crypto/crc32c_generic.ko:\nkernel/drivers/char/hw_random/virtio-rng.ko:\n")
    (moddir / "modules.softdep").write_text("softdep ext4 pre: crc32c\n")
    (moddir / "modules.alias").write_text("alias crc32c crc32c_generic\n"
                                          "alias crypto-crc32c crc32c_generic\n")
    (moddir / "modules.builtin").write_text("kernel/net/packet/af_packet.ko\n")
    return root


def test_module_load_order_puts_hard_and_soft_dependencies_first(tmp_path):
    tree = fake_modules(tmp_path)
    order = module_load_order(tree, "6.1.0-9-test", ["ext4", "af_packet", "virtio-rng"])
    assert order[-2] == "kernel/fs/ext4/ext4.ko"
    assert set(order[:-2]) == {"kernel/crypto/crc32c_generic.ko", "kernel/lib/crc16.ko",
                               "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko"}
    assert order[-1] == "kernel/drivers/char/hw_random/virtio-rng.ko"
    assert "af_packet" not in " ".join(order)  # built in: nothing to load


def test_a_module_the_kernel_lacks_is_a_recipe_error(tmp_path):
    index = ModuleIndex.read(fake_modules(tmp_path) / "lib/modules/6.1.0-9-test")
    with pytest.raises(FirmwareError, match=r"has no module 'vfat'.*`modules:` in the recipe"):
        index.load_order(["vfat"], "6.1.0-9-test")


# --- board scripts -------------------------------------------------------------------------


def board_scripts() -> list[Path]:
    found = []
    for root in (BOARD_DIR / "rootfs", BOARD_DIR / "components"):
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.read_bytes().startswith(b"#!/bin/sh"):
                found.append(path)
    return found


def test_board_shell_scripts_are_posix_and_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    scripts = board_scripts()
    names = {p.name for p in scripts}
    assert {"rcS", "rcK", "network", "dropbear", "default.script", "tstat",
            "tstat-prune"} <= names
    result = subprocess.run(["shellcheck", "-s", "sh", *map(str, scripts)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_inittab_runs_rcs_a_serial_shell_and_rck():
    inittab = (BOARD_DIR / "rootfs/etc/inittab").read_text()
    lines = [line for line in inittab.splitlines() if line and not line.startswith("#")]
    assert "::sysinit:/etc/init.d/rcS" in lines
    assert "ttyS0::askfirst:-/bin/sh" in lines
    assert "::shutdown:/etc/init.d/rcK" in lines


def _prune_tree(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    for index, name in enumerate(["2026_01_01_00_00.out", "2026_01_02_00_00.out",
                                  "2026_01_03_00_00.out"]):
        (out / name).mkdir(parents=True)
        (out / name / "log_tcp_complete").write_bytes(os.urandom(600 * 1024))
        when = 1_700_000_000 + index * 86400
        os.utime(out / name, (when, when))
    return out


def run_prune(shell: list[str], out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = BOARD_DIR / "components/tstat/usr/sbin/tstat-prune"
    return subprocess.run([*shell, str(script), *args, str(out)], capture_output=True,
                          text=True, timeout=120)


def test_tstat_prune_keeps_size_and_age_limits_and_spares_the_current_output(tmp_path):
    out = _prune_tree(tmp_path)
    # Size: 1.8 MB of output against 1 MB: the oldest two go, the newest stays.
    done = run_prune(["sh"], out, "--max-size-mb", "1")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["2026_01_03_00_00.out"]
    assert f"removed {out}/2026_01_01_00_00.out" in done.stdout
    # Still over the limit with only the current output left: it stays, and it says so.
    done = run_prune(["sh"], out, "--max-size-mb", "0", "--min-free-percent", "100")
    assert done.returncode == 0 and (out / "2026_01_03_00_00.out").exists()
    assert "only the output Tstat is writing left" in done.stderr
    # Age: everything is years old, but the newest is never removed.
    out = _prune_tree(tmp_path / "again")
    done = run_prune(["sh"], out, "--max-age-days", "7")
    assert sorted(p.name for p in out.iterdir()) == ["2026_01_03_00_00.out"], done.stdout


def test_tstat_prune_rejects_bad_arguments(tmp_path):
    assert run_prune(["sh"], tmp_path, "--max-size-mb", "x").returncode == 2
    assert run_prune(["sh"], tmp_path / "absent").returncode == 0


# --- the base, built -------------------------------------------------------------------------


class Progress:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def empty_artifacts(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("no-artifacts"))


@pytest.fixture(scope="module")
def base_run(empty_artifacts: str) -> tuple:
    """The base without Tstat (its artifact is not in the empty artifact cache)."""
    progress = Progress()
    base = build_base(load_recipe(), BOARD, cache=TEST_CACHE, progress=progress,
                      artifact_cache=empty_artifacts)
    return base, progress


@pytest.fixture(scope="module")
def base(base_run):
    return base_run[0]


@pytest.fixture(scope="module")
def tstat_base(tmp_path_factory: pytest.TempPathFactory):
    from tests.support.upstream_fakes import artifact_env

    env = artifact_env("tstat-source", "tstat", tmp_path_factory.mktemp("tstat-artifact"))
    return build_base(load_recipe(), BOARD, cache=TEST_CACHE, progress=Progress(),
                      artifact_cache=env["PROBEFORGE_ARTIFACT_CACHE"],
                      artifact_manifest=env["PROBEFORGE_ARTIFACT_MANIFEST"])


def qemu_python(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The image's python3 under qemu-user, never writing bytecode into the base."""
    return subprocess.run([QEMU, "-L", str(tree), str(tree / "usr/bin/python3"), "-I", "-B",
                           *args], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})


def daemon_path(tree: Path) -> str:
    # A host path: qemu-user's -L does not map stat(), so /usr/lib/probe-daemon would be the
    # host's.
    return str(tree / "usr/lib/probe-daemon")


@pytest.mark.slow
def test_base_is_cached_complete_and_described(base, base_run):
    assert base.board == BOARD and base.version == "2026.11.0"
    assert base.dir == TEST_CACHE.resolve() / "base" / base.key
    assert base.tree.is_dir() and base.squashfs.is_file() and base.kernel.is_file()
    assert not list((TEST_CACHE / "base").glob(".build-*")), "a build directory was left"
    record = json.loads((base.dir / "base.json").read_text())
    assert record["key"] == base.key and record["kernel_version"] == base.kernel_version
    expected_key = hashlib.sha256(json.dumps(base.inputs, sort_keys=True,
                                             separators=(",", ":")).encode()).hexdigest()
    assert base.key == expected_key
    assert {"recipe", "board-files", "packages", "probe-daemon", "builder",
            "tools"} <= set(base.inputs)
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in base.inputs.values())
    assert base.epoch == load_recipe().source_date_epoch
    names = {p["name"] for p in base.packages}
    assert {"busybox-static", "dropbear-bin", "python3.11-minimal", "libssl3",
            f"linux-image-{base.kernel_version}"} <= names
    assert not names & {"dpkg", "tar", "coreutils", "dash", "perl-base"}
    for package in base.packages:
        assert set(package) == {"name", "version", "architecture", "sha256"}
        assert re.fullmatch(r"[0-9a-f]{64}", package["sha256"])
        deb = TEST_CACHE / "debs" / (f"{package['name']}_{package['version'].replace(':', '%3a')}"
                                     f"_{package['architecture']}.deb")
        assert hashlib.sha256(deb.read_bytes()).hexdigest() == package["sha256"]
    # Progress was reported, and a second call reuses the base at once.
    progress = Progress()
    again = build_base(load_recipe(), BOARD, cache=TEST_CACHE, progress=progress,
                       artifact_cache=str(base.dir / "no-such-cache"))
    assert again == base
    assert "is cached" in progress.text


@pytest.mark.slow
def test_tstat_is_left_out_with_a_warning_naming_the_command(base, base_run):
    progress = base_run[1]
    assert base.components == ["probe-daemon"]
    assert [o["component"] for o in base.omitted] == ["tstat"]
    assert "probeforge-artifacts fetch tstat-source" in base.omitted[0]["fix"]
    assert "tstat-92523dc.tar.gz" in base.omitted[0]["reason"]
    warnings = [line for line in progress.lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "Tstat" in warnings[0]
    assert "probeforge-artifacts fetch tstat-source" in warnings[0]
    tree = base.tree
    assert not (tree / "usr/local/bin/tstat").exists()
    assert not (tree / "etc/init.d/tstat").exists() and not (tree / "etc/tstat").exists()
    assert not (tree / "etc/rc.d/S70tstat").exists()


@pytest.mark.slow
def test_kernel_is_the_packaged_mips_elf_outside_the_tree(base):
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+-4kc-malta", base.kernel_version)
    info = check_elf(base.kernel, "mipsel")
    assert info["class"] == 32 and info["byteorder"] == "little"
    assert not (base.tree / "boot").exists()
    assert not list(base.tree.rglob("vmlinu*"))


@pytest.mark.slow
def test_modules_are_the_recipe_closure_with_an_index(base):
    moddir = base.tree / "lib/modules" / base.kernel_version
    dep = (moddir / "modules.dep").read_text()
    listed = {line.split(":")[0] for line in dep.splitlines()}
    files = {p.relative_to(moddir).as_posix() for p in moddir.rglob("*.ko")}
    assert listed == files, "modules.dep and the .ko files disagree"
    names = {Path(p).stem.replace("-", "_") for p in files}
    assert {"virtio_pci", "virtio_blk", "virtio_net", "virtio", "virtio_ring", "loop",
            "squashfs", "overlay", "ext4", "jbd2", "mbcache", "crc16",
            "crc32c_generic"} <= names
    assert len(names) < 30, f"more modules than the closure: {sorted(names)}"
    assert "kernel/net/packet/af_packet.ko" in (moddir / "modules.builtin").read_text()
    assert (moddir / "modules.dep.bin").is_file() and (moddir / "modules.alias").is_file()
    order = module_load_order(base.tree, base.kernel_version, ["ext4", "virtio_blk"])
    ext4 = order.index("kernel/fs/ext4/ext4.ko")
    for needed in ("jbd2", "mbcache", "crc16", "crc32c_generic"):
        assert any(needed in p for p in order[:ext4]), needed


@pytest.mark.slow
def test_busybox_provides_the_shell_init_and_the_tools(base):
    tree = base.tree
    for applet in ("bin/sh", "sbin/init", "bin/mount", "sbin/udhcpc", "sbin/syslogd",
                   "usr/bin/awk", "sbin/modprobe", "sbin/start-stop-daemon", "bin/ping",
                   "usr/bin/traceroute", "usr/bin/logger"):
        link = tree / applet
        assert link.is_symlink(), applet
        assert not os.readlink(link).startswith("/"), f"{applet}: absolute link"
        assert link.resolve() == (tree / "bin/busybox").resolve(), applet
    assert not (tree / "linuxrc").exists()
    check_elf(tree / "bin/busybox", "mipsel")


@pytest.mark.slow
def test_ssh_is_dropbear_with_keys_made_at_first_boot(base):
    tree = base.tree
    check_elf(tree / "usr/sbin/dropbear", "mipsel")
    check_elf(tree / "usr/bin/dropbearkey", "mipsel")
    assert (tree / "etc/dropbear").is_dir() and not list((tree / "etc/dropbear").iterdir())
    assert stat.S_IMODE((tree / "etc/dropbear").stat().st_mode) == 0o700
    link = tree / "root/.ssh/authorized_keys"
    assert link.is_symlink() and os.readlink(link) == "../../etc/dropbear/authorized_keys"
    script = (tree / "etc/init.d/dropbear").read_text()
    assert " -s " in script and "KEYGEN=/usr/bin/dropbearkey" in script
    assert (tree / "etc/passwd").read_text() == "root:x:0:0:root:/root:/bin/sh\n"
    shadow = (tree / "etc/shadow").read_text().strip().split(":")
    assert shadow[0] == "root" and shadow[1] == "*"  # no password, not "!" (dropbear: locked)
    assert stat.S_IMODE((tree / "etc/shadow").stat().st_mode) == 0o600
    assert "/bin/sh" in (tree / "etc/shells").read_text().split()


@pytest.mark.slow
def test_no_secret_and_no_host_data_in_the_shared_base(base):
    tree = base.tree
    found = []
    for path in tree.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        key_name = path.suffix in (".key", ".pem", ".crt") or path.name.endswith("_host_key")
        if key_name or PEM_KEY.search(path.read_bytes()):
            found.append(str(path))
    assert found == []
    assert not list((tree / "etc/mplane/certs").iterdir())
    assert (tree / "etc/hostname").read_text() == "miniprobe\n"
    assert (tree / "etc/board").read_text() == f"{BOARD}\n"
    # Version and build are the host layer's (/etc/probeforge-release), not the base's.
    assert not (tree / "etc/probeforge_version").exists()
    assert not list((tree / "etc/uci-defaults").iterdir())


@pytest.mark.slow
def test_services_start_in_order_from_rc_d(base):
    rc = base.tree / "etc/rc.d"
    assert sorted(p.name for p in rc.iterdir()) == ["S10network", "S50dropbear",
                                                    "S60probe-daemon"]
    for link in rc.iterdir():
        assert (rc / os.readlink(link)).resolve().is_file()
    init = base.tree / "etc/init.d/probe-daemon"
    assert init.read_bytes() == (REPO / "packaging/probe-daemon/busybox-init").read_bytes()
    assert os.access(init, os.X_OK)
    keep = (base.tree / "lib/upgrade/keep.d/base").read_text().splitlines()
    assert [line for line in keep if line and not line.startswith("#")] == [
        "/etc/mplane/", "/etc/dropbear/", "/etc/hostname", "/etc/sysupgrade.conf"]
    assert os.readlink(base.tree / "etc/resolv.conf") == "../tmp/resolv.conf"
    for mount_point in ("proc", "sys", "dev", "tmp", "var/run", "overlay", "rom"):
        assert (base.tree / mount_point).is_dir(), mount_point


@pytest.mark.slow
def test_documentation_and_python_test_suites_are_pruned(base):
    tree = base.tree
    assert not (tree / "usr/share/man").exists() and not (tree / "usr/share/locale").exists()
    leftovers = [p for p in (tree / "usr/share/doc").rglob("*")
                 if p.is_file() and p.name != "copyright"]
    assert leftovers == []
    stdlib = tree / "usr/lib/python3.11"
    for gone in ("test", "idlelib", "tkinter", "lib2to3", "ensurepip"):
        assert not (stdlib / gone).exists(), gone
    assert not list((stdlib / "lib-dynload").glob("_test*"))
    assert not (tree / "lib/systemd").exists()


@pytest.mark.slow
def test_python_modules_are_precompiled_with_unchecked_hashes(base):
    stdlib = base.tree / "usr/lib/python3.11"
    for module, source in (("ssl", stdlib / "ssl.py"), ("json", stdlib / "json/__init__.py"),
                           ("probe_daemon.cli",
                            base.tree / "usr/lib/probe-daemon/probe_daemon/cli.py")):
        pyc = source.parent / "__pycache__" / f"{source.stem}.cpython-311.pyc"
        data = pyc.read_bytes()
        assert data[:4] == importlib.util.MAGIC_NUMBER, module
        assert int.from_bytes(data[4:8], "little") == 0b01, f"{module}: not unchecked-hash"
        code = marshal.loads(data[16:])
        # The path the device sees, not the build directory.
        assert code.co_filename == "/" + source.relative_to(base.tree).as_posix()
    missing = [p for p in stdlib.rglob("*.py")
               if not (p.parent / "__pycache__" / f"{p.stem}.cpython-311.pyc").is_file()]
    assert missing == []


@pytest.mark.slow
@needs_qemu
def test_the_image_python_imports_the_daemon_from_bytecode(base):
    code = (f"import sys; sys.path.insert(0, {daemon_path(base.tree)!r}); "
            "import ssl, json, socket, http.client, probe_daemon, probe_daemon.cli; "
            "print('ok', ssl.OPENSSL_VERSION)")
    done = qemu_python(base.tree, "-v", "-c", code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok OpenSSL 3.")
    # -v names where each module's code came from: the precompiled files, not the sources.
    loaded = re.findall(r"# code object from '([^']+)'", done.stderr)
    assert any(p.endswith("/usr/lib/python3.11/__pycache__/ssl.cpython-311.pyc") for p in loaded)
    assert any(p.endswith("/json/__pycache__/__init__.cpython-311.pyc") for p in loaded)
    assert any(p.endswith("/probe_daemon/__pycache__/cli.cpython-311.pyc") for p in loaded)
    assert not [p for p in loaded if p.endswith(".py")], "compiled from source at run time"


@pytest.mark.slow
@needs_qemu
def test_probe_daemon_help_runs_on_the_image_python(base):
    code = (f"import sys; sys.path.insert(0, {daemon_path(base.tree)!r}); "
            "from probe_daemon.cli import main; sys.argv = ['probe-daemon', '--help']; "
            "sys.exit(main())")
    done = qemu_python(base.tree, "-c", code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--config" in done.stdout and "--check" in done.stdout
    launcher = (base.tree / "usr/bin/probe-daemon").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -I\n")
    assert os.readlink(base.tree / "usr/bin/python3") == "python3.11"


@pytest.mark.slow
def test_squashfs_lists_the_tree(base):
    listing = subprocess.run(["unsquashfs", "-l", str(base.squashfs)], capture_output=True,
                             text=True, check=True).stdout.split()
    in_image = {p.removeprefix("squashfs-root/") for p in listing
                if p.startswith("squashfs-root/")}
    in_tree = {p.relative_to(base.tree).as_posix() for p in base.tree.rglob("*")}
    assert in_image == in_tree
    detail = subprocess.run(["unsquashfs", "-lls", str(base.squashfs), "etc/shadow"],
                            capture_output=True, text=True, check=True).stdout
    assert re.search(r"-rw------- root/root +\d+ 2026-11-01 00:00 squashfs-root/etc/shadow",
                     detail), detail


def _same_inputs_cache(tmp_path: Path) -> Path:
    """A fresh cache that shares the downloads of the test cache (hard links)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("debs", "apt"):
        subprocess.run(["cp", "-al", str(TEST_CACHE / name), str(cache / name)], check=True)
    return cache


@pytest.mark.slow
def test_a_second_build_elsewhere_gives_the_same_tree_and_squashfs(base, tmp_path,
                                                                   empty_artifacts):
    cache = _same_inputs_cache(tmp_path)
    progress = Progress()
    again = build_base(load_recipe(), BOARD, cache=cache, progress=progress,
                       artifact_cache=empty_artifacts)
    assert "extracting" in progress.text, "not built again"
    assert again.key == base.key and again.dir != base.dir
    assert again.squashfs.read_bytes() == base.squashfs.read_bytes()
    assert again.kernel.read_bytes() == base.kernel.read_bytes()
    assert tree_snapshot(again.tree) == tree_snapshot(base.tree)

    def modes(root: Path) -> dict[str, int]:
        return {p.relative_to(root).as_posix(): p.lstat().st_mode for p in root.rglob("*")}

    assert modes(again.tree) == modes(base.tree)


@pytest.mark.slow
def test_an_interrupted_build_leaves_nothing_behind(tmp_path, empty_artifacts, monkeypatch):
    import firmware.rootfs

    cache = _same_inputs_cache(tmp_path)

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(firmware.rootfs, "_link_applets", broken)
    with pytest.raises(KeyboardInterrupt):
        build_base(load_recipe(), BOARD, cache=cache, progress=Progress(),
                   artifact_cache=empty_artifacts)
    assert [p.name for p in (cache / "base").iterdir()] == [".lock"]


@pytest.mark.slow
def test_tstat_is_cross_built_into_the_base_when_its_source_is_there(tstat_base, base):
    from probe_daemon.measurements.tstat import SECTIONS, read_settings

    tree = tstat_base.tree
    assert tstat_base.components == ["probe-daemon", "tstat"] and tstat_base.omitted == []
    assert tstat_base.key != base.key
    assert {"tstat-source", "tstat-build"} <= set(tstat_base.inputs)
    info = check_elf(tree / "usr/local/bin/tstat", "mipsel")
    assert info["class"] == 32 and info["byteorder"] == "little"
    assert {"libpcap0.8", "libstdc++6"} <= {p["name"] for p in tstat_base.packages}
    assert os.readlink(tree / "etc/rc.d/S70tstat") == "../init.d/tstat"
    assert os.access(tree / "etc/init.d/tstat", os.X_OK)
    assert os.access(tree / "usr/sbin/tstat-prune", os.X_OK)
    conf = tree / "etc/tstat/runtime.conf"
    values = read_settings(conf.read_bytes(), list(SECTIONS), conf)  # editable by the daemon
    assert set(values.values()) == {"0"}
    assert (tree / "etc/tstat/net.conf").read_text().splitlines()[-2:] == ["0.0.0.0/0", "::/0"]
    options = [line for line in (tree / "etc/tstat/tstat.conf").read_text().splitlines()
               if not line.startswith("#")]
    assert options == ["-s /var/log/tstat", "-T /etc/tstat/runtime.conf",
                       "-N /etc/tstat/net.conf"]
    assert (tree / "var/log/tstat").is_dir()


@pytest.mark.slow
@needs_qemu
def test_the_cross_built_tstat_and_its_pruning_run_on_the_image(tstat_base, tmp_path):
    tree = tstat_base.tree
    done = subprocess.run([QEMU, "-L", str(tree), str(tree / "usr/local/bin/tstat"), "-v"],
                          capture_output=True, text=True, timeout=120)
    assert "tstat" in (done.stdout + done.stderr).lower(), done.stderr
    assert "cannot open shared object" not in done.stderr
    out = _prune_tree(tmp_path)
    done = run_prune([QEMU, str(tree / "bin/busybox"), "sh"], out, "--max-size-mb", "1",
                     "--max-age-days", "7")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["2026_01_03_00_00.out"]



# --- the base on the emulated board ---------------------------------------------------------

FIRST_BOOT_OK = "#!/bin/sh\necho ok > /etc/first-boot-ran\n"
FIRST_BOOT_FAILS = "#!/bin/sh\nexit 3\n"


def _boot_initrd(tree: Path, dest: Path, public_key: str) -> Path:
    """The whole base tree as an initramfs (busybox init runs straight from it, no flash),
    with an authorized key and two first-boot scripts, one of which fails."""
    from firmware.cpio import char_device, file, tree_entries, write_newc_gz

    extra = {"etc/dropbear/authorized_keys": file("etc/dropbear/authorized_keys",
                                                  public_key.encode(), 0o600),
             "etc/uci-defaults/10-ok": file("etc/uci-defaults/10-ok", FIRST_BOOT_OK.encode()),
             "etc/uci-defaults/20-fails": file("etc/uci-defaults/20-fails",
                                               FIRST_BOOT_FAILS.encode())}
    entries = [e for e in tree_entries(tree) if e.path not in extra]
    return write_newc_gz([*entries, *extra.values(), char_device("dev/console", 5, 1)],
                         dest, epoch=1793491200)


@pytest.mark.slow
@pytest.mark.mips
@needs_qemu
def test_the_base_boots_to_ssh_with_its_services_and_first_boot_scripts(tstat_base, tmp_path):
    qemu = shutil.which("qemu-system-mipsel")
    if qemu is None:
        pytest.skip("qemu-system-mips not installed")
    import time

    import paramiko
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.support.targets import free_port

    private = Ed25519PrivateKey.generate()
    key_file = tmp_path / "id_ed25519"
    key_file.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()))
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    initrd = _boot_initrd(tstat_base.tree, tmp_path / "initrd.gz", public + " test\n")
    port = free_port()
    console = tmp_path / "console.log"
    board = load_recipe().board(BOARD)
    command = ["setpriv", "--pdeathsig", "KILL", qemu, "-M", board.qemu_machine,
               "-m", str(board.qemu_memory), "-kernel", str(tstat_base.kernel),
               "-initrd", str(initrd), "-append", "console=ttyS0 rdinit=/sbin/init",
               "-nodefaults", "-display", "none", "-monitor", "none",
               "-serial", f"file:{console}",
               "-netdev", f"user,id=net,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
               # The NIC alone on its interrupt line, as rig/board.py explains.
               "-device", f"virtio-net-pci,netdev=net,addr={NIC_SLOT:#x}",
               "-accel", "tcg", "-no-reboot"]
    machine_process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    key = paramiko.Ed25519Key.from_private_key_file(str(key_file))

    def run(command: str) -> str:
        _, stdout, _ = client.exec_command(command, timeout=60)
        output = stdout.read().decode()
        # Dropbear serves one session channel at a time: wait until this one is done.
        stdout.channel.recv_exit_status()
        return output

    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                client.connect("127.0.0.1", port=port, username="root", pkey=key,
                               timeout=5, banner_timeout=10, auth_timeout=10,
                               look_for_keys=False, allow_agent=False)
                break
            except (OSError, paramiko.SSHException) as exc:
                assert machine_process.poll() is None, console.read_text()[-3000:]
                assert time.monotonic() < deadline, f"no SSH: {exc}\n{console.read_text()[-3000:]}"
                time.sleep(2)
        host_key = client.get_transport().get_remote_server_key()
        assert host_key.get_name() in ("ssh-ed25519", "ecdsa-sha2-nistp256")
        assert run("hostname").strip() == "miniprobe"
        processes = run("ps")
        for expected in ("syslogd", "udhcpc -i eth0", "/usr/sbin/dropbear",
                         "/etc/init.d/tstat run", "tstat -l -i eth0"):
            assert expected in processes, processes
        assert "inet 10.0.2.15/24" in run("ip -4 addr show eth0")
        keys = run("ls /etc/dropbear").split()
        assert {"dropbear_ed25519_host_key", "dropbear_ecdsa_host_key"} <= set(keys)
        # First boot: the script that succeeded ran once and is gone, the failed one stays.
        assert run("cat /etc/first-boot-ran").strip() == "ok"
        assert run("ls /etc/uci-defaults").split() == ["20-fails"]
        log = run("logread")
        assert "first boot: 20-fails failed (exit status 3)" in log
        assert "first boot: 10-ok done" in log
        assert run("cat /proc/sys/kernel/hostname; cat /etc/board").split() == [
            "miniprobe", BOARD]
        # Password logins are off: only the key got in.
        assert " -s " in run("cat /proc/$(cat /var/run/dropbear.pid)/cmdline | tr '\\0' ' '")
        client.exec_command("poweroff")
        machine_process.wait(timeout=120)
        shutdown = console.read_text()
        assert "tstat: stopped" in shutdown and "reboot: Power down" in shutdown
    finally:
        client.close()
        if machine_process.poll() is None:
            machine_process.kill()
            machine_process.wait()
