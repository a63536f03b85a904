# SPDX-License-Identifier: Apache-2.0
"""The artifact cache: downloads, verification and every failure path, against a local server.

The server is http.server in a thread on 127.0.0.1 that the tests start; the
manifests are written per test with pins computed from the bytes served, so
nothing here needs the internet. The real manifest is checked for validity,
for agreement with the RI harness pins, and (when /work/.mirror holds the
repositories) for its git-archive pins.
"""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

import artifacts
from artifacts.cli import main
from rig.mplane_ri import RI_REQUIREMENTS
from tests.conftest import REPO

BIN = Path(sys.executable).parent
MIRRORS = Path("/work/.mirror")


# --- a local HTTP server -----------------------------------------------------


@dataclass
class Served:
    """What the server answers; tests change it while it runs."""

    files: dict[str, bytes] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    # Seconds to sleep after each 64 KiB chunk of that path: a slow upstream.
    delay: dict[str, float] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    base: str = ""


class _Handler(BaseHTTPRequestHandler):
    served: Served

    def do_GET(self) -> None:
        served = self.served
        served.requests.append(self.path)
        code = served.status.get(self.path)
        body = served.files.get(self.path)
        if code is None:
            code = 200 if body is not None else 404
        if code != 200 or body is None:
            self.send_error(code)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        step = 64 * 1024
        try:
            for start in range(0, len(body), step):
                self.wfile.write(body[start:start + step])
                self.wfile.flush()
                served.sent[self.path] = served.sent.get(self.path, 0) + step
                if served.delay.get(self.path):
                    time.sleep(served.delay[self.path])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was killed mid-download: exactly what a test wants

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Served]:
    served = Served()
    handler = type("Handler", (_Handler,), {"served": served})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    served.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in (artifacts.CACHE_ENV, artifacts.MANIFEST_ENV, artifacts.MIRROR_ENV):
        monkeypatch.delenv(name, raising=False)
    # A proxy from the developer's environment must not intercept 127.0.0.1.
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# --- manifests and helpers ---------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(name: str, data: bytes, url: str, *, file: str | None = None,
          groups: tuple[str, ...] = ("demo",), size: bool = True, **extra: Any) -> dict:
    pinned: dict[str, Any] = {"name": name, "url": url, "sha256": sha(data),
                              "groups": list(groups), **extra}
    if file is not None:
        pinned["file"] = file
    if size:
        pinned["size"] = len(data)
    return pinned


def write_manifest(path: Path, entries: list[dict], groups: dict | None = None) -> Path:
    groups = groups or {"demo": "what the tests need"}
    path.write_text("# SPDX-License-Identifier: Apache-2.0\n---\n"
                    + yaml.safe_dump({"version": 1, "groups": groups, "artifacts": entries}))
    return path


@dataclass
class Setup:
    manifest: Path
    cache: Path

    def run(self, capsys, *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--manifest", str(self.manifest), "--cache", str(self.cache), *args])
        out, err = capsys.readouterr()
        return code, out, err


def one_file(tmp_path: Path, server: Served, data: bytes, name: str = "demo",
             file: str = "demo-1.0.tar.gz", **extra: Any) -> Setup:
    server.files[f"/upstream/{file}"] = data
    manifest = write_manifest(tmp_path / "manifest.yml",
                              [entry(name, data, f"{server.base}/upstream/{file}", **extra)])
    return Setup(manifest, tmp_path / "cache")


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name != ".lock") if cache.exists() else []


def errors(stderr: str) -> list[str]:
    """The error lines; fetch also reports progress ("downloading URL") on stderr."""
    return [line for line in stderr.splitlines() if line.startswith("probeforge-artifacts: ")]


DATA = b"pinned upstream bytes\n" * 1000


# --- fetch ---------------------------------------------------------------------


def test_fetch_downloads_verifies_then_reuses(tmp_path, server, capsys):
    setup = one_file(tmp_path, server, DATA)
    code, out, _ = setup.run(capsys, "fetch", "demo")
    assert code == 0
    assert f"demo: fetched demo-1.0.tar.gz from {server.base}/upstream/demo-1.0.tar.gz" in out
    cached = setup.cache / "demo-1.0.tar.gz"
    assert cached.read_bytes() == DATA
    assert cached.stat().st_mode & 0o777 == 0o644
    assert leftovers(setup.cache) == ["demo-1.0.tar.gz"]
    code, out, _ = setup.run(capsys, "fetch")
    assert code == 0 and "already in the cache, verified" in out
    assert server.requests == ["/upstream/demo-1.0.tar.gz"]
    code, out, _ = setup.run(capsys, "path", "demo")
    assert (code, out) == (0, f"{cached}\n")
    assert Path(out.strip()).is_absolute()


def test_fetch_killed_mid_download_leaves_nothing_under_the_final_name(tmp_path, server, capsys):
    big = os.urandom(8 * 1024 * 1024)
    setup = one_file(tmp_path, server, big, file="big-2.0.tar.gz")
    server.delay["/upstream/big-2.0.tar.gz"] = 0.02  # ~3 MB/s: about 3 s for the file
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "artifacts", "--manifest", str(setup.manifest), "--cache",
         str(setup.cache), "fetch", "demo"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        parts: list[Path] = []
        while time.monotonic() < deadline:
            parts = list(setup.cache.glob(".big-2.0.tar.gz.*.part")) if setup.cache.exists() else []
            if parts and parts[0].stat().st_size >= 1024 * 1024:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        else:
            pytest.fail("the download never got going")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert server.sent["/upstream/big-2.0.tar.gz"] < len(big), "killed too late to prove much"
    assert not (setup.cache / "big-2.0.tar.gz").exists()
    assert [p.name for p in setup.cache.glob(".*.part")] == [parts[0].name]
    code, _, _ = setup.run(capsys, "check")
    assert code == 1
    server.delay.clear()
    code, out, _ = setup.run(capsys, "fetch")
    assert code == 0, out
    assert (setup.cache / "big-2.0.tar.gz").read_bytes() == big
    # The dead process's partial file went when the next writer took the lock.
    assert leftovers(setup.cache) == ["big-2.0.tar.gz"]


def test_mirrors_are_tried_first_and_upstream_is_the_fallback(tmp_path, server, capsys):
    setup = one_file(tmp_path, server, DATA)
    server.files["/mirror-b/demo-1.0.tar.gz"] = DATA
    code, out, _ = setup.run(capsys, "fetch", "--mirror", f"{server.base}/mirror-a/",
                             "--mirror", f"{server.base}/mirror-b")
    assert code == 0
    assert f"from {server.base}/mirror-b/demo-1.0.tar.gz" in out
    assert server.requests == ["/mirror-a/demo-1.0.tar.gz", "/mirror-b/demo-1.0.tar.gz"]

    # A mirror without the file: upstream still delivers.
    (setup.cache / "demo-1.0.tar.gz").unlink()
    server.requests.clear()
    code, out, _ = setup.run(capsys, "fetch", "--mirror", f"{server.base}/mirror-a")
    assert code == 0 and f"from {server.base}/upstream/demo-1.0.tar.gz" in out
    assert server.requests == ["/mirror-a/demo-1.0.tar.gz", "/upstream/demo-1.0.tar.gz"]


def test_mirror_from_the_environment_and_a_local_directory(tmp_path, server, capsys,
                                                           monkeypatch):
    setup = one_file(tmp_path, server, DATA)
    server.files["/env-mirror/demo-1.0.tar.gz"] = DATA
    monkeypatch.setenv(artifacts.MIRROR_ENV, f"{server.base}/env-mirror")
    code, out, _ = setup.run(capsys, "fetch")
    assert code == 0 and "/env-mirror/demo-1.0.tar.gz" in out
    # --mirror replaces the environment's; a directory (a mounted USB stick) is a mirror too.
    (setup.cache / "demo-1.0.tar.gz").unlink()
    stick = tmp_path / "stick"
    stick.mkdir()
    (stick / "demo-1.0.tar.gz").write_bytes(DATA)
    server.requests.clear()
    code, out, _ = setup.run(capsys, "fetch", "--mirror", str(stick))
    assert code == 0 and f"from {stick.as_uri()}/demo-1.0.tar.gz" in out
    assert server.requests == []


def test_404_everywhere_is_one_clear_line(tmp_path, server, capsys):
    setup = one_file(tmp_path, server, DATA)
    del server.files["/upstream/demo-1.0.tar.gz"]
    code, _, err = setup.run(capsys, "fetch", "--mirror", f"{server.base}/m")
    assert code == 1
    lines = errors(err)
    assert len(lines) == 1
    assert lines[0].startswith("probeforge-artifacts: error: could not fetch demo "
                               "(demo-1.0.tar.gz), nothing was saved: ")
    assert f"{server.base}/m/demo-1.0.tar.gz: HTTP 404" in lines[0]
    assert f"{server.base}/upstream/demo-1.0.tar.gz: HTTP 404" in lines[0]
    assert f"run `probeforge-artifacts add FILE` (sha256 {sha(DATA)})" in lines[0]
    assert leftovers(setup.cache) == []


def test_unreachable_upstream(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.yml",
                              [entry("demo", DATA, "http://127.0.0.1:9/demo-1.0.tar.gz")])
    code, _, err = Setup(manifest, tmp_path / "cache").run(capsys, "fetch", "--timeout", "5")
    assert code == 1
    assert "http://127.0.0.1:9/demo-1.0.tar.gz: Connection refused" in err


@pytest.mark.parametrize("served, problem", [
    (b"X" * len(DATA), f"served sha256 {sha(b'X' * len(DATA))}, expected {sha(DATA)}"),
    (DATA[:-1], f"served {len(DATA) - 1} bytes, expected {len(DATA)}"),
    (DATA + b"more", f"served more than the pinned {len(DATA)} bytes"),
], ids=["same-size", "short", "long"])
def test_checksum_mismatch_on_download_saves_nothing(tmp_path, server, capsys, served, problem):
    setup = one_file(tmp_path, server, DATA)
    server.files["/upstream/demo-1.0.tar.gz"] = served
    code, _, err = setup.run(capsys, "fetch")
    assert code == 1
    assert f"{server.base}/upstream/demo-1.0.tar.gz {problem}" in err
    assert "check the pin and the mirror" in err
    assert len(errors(err)) == 1
    assert leftovers(setup.cache) == []


def test_mismatch_without_a_pinned_size_is_caught_by_the_hash(tmp_path, server, capsys):
    setup = one_file(tmp_path, server, DATA, size=False)
    server.files["/upstream/demo-1.0.tar.gz"] = DATA[:100]
    code, _, err = setup.run(capsys, "fetch")
    assert code == 1 and f"served sha256 {sha(DATA[:100])}, expected {sha(DATA)}" in err
    assert leftovers(setup.cache) == []


def test_a_bad_mirror_copy_falls_back_to_upstream(tmp_path, server, capsys):
    setup = one_file(tmp_path, server, DATA)
    server.files["/m/demo-1.0.tar.gz"] = b"tampered"
    code, out, _ = setup.run(capsys, "fetch", "--mirror", f"{server.base}/m")
    assert code == 0 and "from " + f"{server.base}/upstream/" in out


def test_git_made_tarball_failure_says_how_to_make_it(tmp_path, server, capsys):
    how = ("make it with `git archive --format=tar --prefix=demo-abcdef0/ abcdef0 | gzip -n -9 > "
           "demo-abcdef0.tar.gz`")
    server.files["/archive/abcdef0.tar.gz"] = b"what a forge serves"
    manifest = write_manifest(tmp_path / "m.yml", [entry(
        "demo", DATA, f"{server.base}/archive/abcdef0.tar.gz", file="demo-abcdef0.tar.gz",
        how=how, git={"repository": "https://example.invalid/demo.git",
                      "commit": "abcdef0" + "1" * 33, "prefix": "demo-abcdef0/"})])
    setup = Setup(manifest, tmp_path / "cache")
    code, _, err = setup.run(capsys, "fetch")
    assert code == 1 and err.rstrip().endswith(how)
    code, _, err = setup.run(capsys, "path", "demo")
    assert code == 1 and err.rstrip().endswith(f"; {how}")


# --- verification on use -----------------------------------------------------------


def test_missing_file_names_the_fetch_command(tmp_path, server, capsys):
    setup = one_file(tmp_path, server, DATA)
    code, out, err = setup.run(capsys, "path", "demo")
    assert (code, out) == (1, "")
    assert err == (f"probeforge-artifacts: error: demo-1.0.tar.gz is missing from {setup.cache}: "
                   f"run `probeforge-artifacts fetch demo` on a machine with internet access, "
                   f"or copy the file there (sha256 {sha(DATA)})\n")
    with pytest.raises(artifacts.CacheError, match="run `probeforge-artifacts fetch demo`"):
        artifacts.verified_path("demo", str(setup.cache), str(setup.manifest))


def test_corrupt_file_is_reported_refused_and_replaced_by_fetch(tmp_path, server, capsys):
    setup = one_file(tmp_path, server, DATA)
    setup.cache.mkdir()
    bad = setup.cache / "demo-1.0.tar.gz"
    bad.write_bytes(b"Y" * len(DATA))  # same size: only the hash can tell
    expected = (f"{bad} has sha256 {sha(b'Y' * len(DATA))}, expected {sha(DATA)}: delete it and "
                f"fetch again (`probeforge-artifacts fetch demo`)")
    code, out, _ = setup.run(capsys, "check")
    assert (code, out) == (1, expected + "\n")
    code, out, err = setup.run(capsys, "path", "demo")
    assert (code, out, err) == (1, "", f"probeforge-artifacts: error: {expected}\n")
    with pytest.raises(artifacts.CacheError) as caught:
        artifacts.verified_path("demo", str(setup.cache), str(setup.manifest))
    assert (str(caught.value), caught.value.state) == (expected, "corrupt")
    # A truncated copy is caught before hashing.
    bad.write_bytes(DATA[:10])
    code, out, _ = setup.run(capsys, "check")
    assert code == 1 and f"{bad} has 10 bytes, expected {len(DATA)}: delete it" in out
    # fetch replaces it, only once a verified download is there.
    code, out, _ = setup.run(capsys, "fetch")
    assert code == 0 and "replaced a bad copy" in out
    assert bad.read_bytes() == DATA


def test_add_right_and_wrong_files(tmp_path, server, capsys):
    setup = one_file(tmp_path, server, DATA)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    wrong = downloads / "demo-1.0.tar.gz"
    wrong.write_bytes(b"Z" * len(DATA))
    code, out, err = setup.run(capsys, "add", str(wrong))
    assert code == 1 and out == ""
    assert err == (f"probeforge-artifacts: error: {wrong} has sha256 {sha(wrong.read_bytes())}, "
                   f"expected {sha(DATA)} for demo (demo-1.0.tar.gz): not added; download "
                   f"{server.base}/upstream/demo-1.0.tar.gz again\n")
    assert leftovers(setup.cache) == []

    right = downloads / "demo-1.0.tar.gz"
    right.write_bytes(DATA)
    code, out, _ = setup.run(capsys, "add", str(right))
    assert (code, out) == (0, "demo: added demo-1.0.tar.gz, verified\n")
    assert (setup.cache / "demo-1.0.tar.gz").read_bytes() == DATA
    code, out, _ = setup.run(capsys, "add", str(right))
    assert (code, out) == (0, "demo: demo-1.0.tar.gz already in the cache, verified\n")
    assert server.requests == []


def test_add_finds_the_artifact_by_name_or_by_hash(tmp_path, server, capsys):
    setup = one_file(tmp_path, server, DATA)
    renamed = tmp_path / "download(1).bin"
    renamed.write_bytes(DATA)
    code, out, _ = setup.run(capsys, "add", str(renamed))
    assert code == 0 and "added demo-1.0.tar.gz" in out
    (setup.cache / "demo-1.0.tar.gz").unlink()
    code, out, _ = setup.run(capsys, "add", str(renamed), "--name", "demo")
    assert code == 0 and (setup.cache / "demo-1.0.tar.gz").read_bytes() == DATA
    stranger = tmp_path / "stranger.bin"
    stranger.write_bytes(b"nobody pinned this")
    code, _, err = setup.run(capsys, "add", str(stranger))
    assert code == 2
    assert f"{stranger} (sha256 {sha(b'nobody pinned this')}) is no file of" in err
    code, _, err = setup.run(capsys, "add", str(tmp_path / "nope"))
    assert code == 1 and "cannot be read" in err


# --- list and check ------------------------------------------------------------------


def three_states(tmp_path: Path, server: Served) -> Setup:
    good, gone, bad = b"good" * 100, b"gone" * 100, b"bad!" * 100
    entries = [entry("alpha", good, f"{server.base}/alpha.tar.gz", groups=("one",)),
               entry("beta", gone, f"{server.base}/beta.tar.gz", groups=("one", "two"),
                     size=False),
               entry("gamma", bad, f"{server.base}/gamma.tar.gz", groups=("two",))]
    manifest = write_manifest(tmp_path / "m.yml", entries, {"one": "first", "two": "second"})
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "alpha.tar.gz").write_bytes(good)
    (cache / "gamma.tar.gz").write_bytes(b"BAD!" * 100)
    return Setup(manifest, cache)


def test_list_shows_every_state_and_exits_0(tmp_path, server, capsys):
    setup = three_states(tmp_path, server)
    code, out, _ = setup.run(capsys, "list")
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["cache:", str(setup.cache)]
    assert rows[1] == ["manifest:", str(setup.manifest)]
    assert rows[2:] == [["NAME", "FILE", "SIZE", "STATE", "GROUPS"],
                        ["alpha", "alpha.tar.gz", "400", "present", "one"],
                        ["beta", "beta.tar.gz", "?", "missing", "one,two"],
                        ["gamma", "gamma.tar.gz", "400", "corrupt", "two"]]
    code, out, _ = setup.run(capsys, "list", "--group", "one")
    assert code == 0 and "gamma" not in out and "beta" in out


def test_check_exit_codes_and_one_line_per_problem(tmp_path, server, capsys):
    setup = three_states(tmp_path, server)
    code, out, err = setup.run(capsys, "check")
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"beta.tar.gz is missing from {setup.cache}: run "
                               "`probeforge-artifacts fetch beta`")
    assert lines[1].startswith(f"{setup.cache / 'gamma.tar.gz'} has sha256 ")
    assert err == f"cache {setup.cache} is incomplete for all groups: 2 of 3 artifacts missing " \
                  "or corrupt\n"
    (setup.cache / "beta.tar.gz").write_bytes(b"gone" * 100)
    code, out, _ = setup.run(capsys, "check", "--group", "one")
    assert (code, out) == (0, f"cache {setup.cache} is complete for group one: 2 artifacts "
                              "verified\n")
    code, _, err = setup.run(capsys, "check", "--group", "three")
    assert code == 2 and "no group named 'three'" in err
    code, out, _ = setup.run(capsys, "path", "--group", "one")
    assert code == 0 and out.splitlines() == [str(setup.cache / "alpha.tar.gz"),
                                              str(setup.cache / "beta.tar.gz")]
    # All or nothing for scripts: one bad file, no paths at all.
    code, out, _ = setup.run(capsys, "path", "alpha", "gamma")
    assert (code, out) == (1, "")
    code, _, err = setup.run(capsys, "path", "delta")
    assert code == 2 and "no artifact named 'delta'" in err


def test_cache_and_manifest_resolution_order(tmp_path, monkeypatch):
    env = {artifacts.CACHE_ENV: "/from/env", artifacts.MANIFEST_ENV: "/env/m.yml"}
    assert artifacts.resolve_cache_dir("/cli", env) == Path("/cli")
    assert artifacts.resolve_cache_dir(None, env) == Path("/from/env")
    assert artifacts.resolve_cache_dir(None, {}) == Path.home() / ".cache/probeforge/artifacts"
    assert artifacts.resolve_manifest_path("/cli.yml", env) == Path("/cli.yml")
    assert artifacts.resolve_manifest_path(None, env) == Path("/env/m.yml")
    assert artifacts.resolve_manifest_path(None, {}) == artifacts.DEFAULT_MANIFEST
    assert artifacts.resolve_mirrors(["http://a/"], {artifacts.MIRROR_ENV: "http://b"}) == \
        ["http://a"]
    assert artifacts.resolve_mirrors([], {artifacts.MIRROR_ENV: "http://b http://c/"}) == \
        ["http://b", "http://c"]
    monkeypatch.chdir(tmp_path)
    assert artifacts.resolve_mirrors(["stick"], {}) == [(tmp_path / "stick").as_uri()]


# --- manifest validation -------------------------------------------------------------


GOOD = {"name": "ok", "url": "https://example.org/ok-1.tar.gz", "sha256": "a" * 64,
        "groups": ["demo"]}


@pytest.mark.parametrize("entries, problem", [
    ([{**GOOD, "sha256": "abc123"}],
     "artifact ok: sha256 must be 64 hexadecimal digits, got 6 characters"),
    ([GOOD, {**GOOD, "name": "other"}],
     "duplicate file name 'ok-1.tar.gz' (artifacts ok and other)"),
    ([{**GOOD, "groups": ["demo", "nightly"]}],
     "artifact ok: unknown group 'nightly' (defined: demo)"),
    ([GOOD, {**GOOD, "file": "other.tar.gz"}], "duplicate artifact name 'ok' (entries 1 and 2)"),
    ([{**GOOD, "url": "ftp://example.org/x"}],
     "artifact ok: url must be an http(s) URL, got 'ftp://example.org/x'"),
    ([{**GOOD, "file": "../escape"}], "artifact ok: file '../escape' must be a plain file name"),
    ([{**GOOD, "size": -1}], "artifact ok: size must be a positive number of bytes, got -1"),
    ([{**GOOD, "sha": "x"}], "artifact ok: unknown key 'sha'"),
    ([{**GOOD, "how": "two\nlines"}], "artifact ok: how must be one line of text"),
    ([{**GOOD, "how": "run something",
       "git": {"repository": "https://example.org/ok.git", "commit": "b" * 40,
               "prefix": "ok-bbbbbbb/"}}],
     "artifact ok: how must contain the command `git archive --format=tar --prefix=ok-bbbbbbb/ "
     "bbbbbbb | gzip -n -9 > ok-1.tar.gz`"),
])
def test_manifest_validation_names_each_problem(tmp_path, capsys, entries, problem):
    path = write_manifest(tmp_path / "m.yml", entries)
    with pytest.raises(artifacts.ManifestError) as caught:
        artifacts.load_manifest(path)
    assert len(caught.value.problems) == 1, caught.value.problems
    assert caught.value.problems[0].startswith(problem)
    code = main(["--manifest", str(path), "--cache", str(tmp_path / "c"), "check"])
    _, err = capsys.readouterr()
    assert code == 2
    assert err == f"probeforge-artifacts: error: manifest {path}: {caught.value.problems[0]}\n"


def test_manifest_validation_reports_every_problem_one_line_each(tmp_path, capsys):
    path = write_manifest(tmp_path / "m.yml", [
        {**GOOD, "name": "short", "file": "short.tgz", "sha256": "f" * 63},
        {**GOOD, "name": "first"},
        {**GOOD, "name": "second"},
        {**GOOD, "name": "stray", "file": "stray.tgz", "groups": ["unknown"]},
    ])
    code = main(["--manifest", str(path), "list"])
    _, err = capsys.readouterr()
    assert code == 2
    prefix = f"probeforge-artifacts: error: manifest {path}: "
    assert err.splitlines() == [
        prefix + "artifact short: sha256 must be 64 hexadecimal digits, got 63 characters",
        prefix + "duplicate file name 'ok-1.tar.gz' (artifacts first and second)",
        prefix + "artifact stray: unknown group 'unknown' (defined: demo)",
    ]


def test_manifest_that_is_not_yaml_or_not_there(tmp_path, capsys):
    broken = tmp_path / "broken.yml"
    broken.write_text("artifacts: [\n")
    with pytest.raises(artifacts.ManifestError, match=r"not valid YAML"):
        artifacts.load_manifest(broken)
    code = main(["--manifest", str(tmp_path / "absent.yml"), "list"])
    assert code == 2
    assert "cannot be read (No such file or directory)" in capsys.readouterr().err


# --- the Ansible lookup ----------------------------------------------------------------


LOOKUP_PLAYBOOK = """\
- name: Artifact lookup
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: Show the present artifact
      ansible.builtin.debug:
        msg: "{{ lookup('probeforge.testbed.artifact', 'present') }}"
    - name: The same with the cache given to the lookup itself
      ansible.builtin.set_fact:
        via_option: "{{ lookup('probeforge.testbed.artifact', 'present', cache=other_cache) }}"
    - name: Missing and corrupt artifacts fail
      block:
        - name: Look up the missing artifact
          ansible.builtin.debug:
            msg: "{{ lookup('probeforge.testbed.artifact', 'missing') }}"
      rescue:
        - name: Keep the message
          ansible.builtin.set_fact:
            missing_error: "{{ ansible_failed_result.msg }}"
    - name: Corrupt
      block:
        - name: Look up the corrupt artifact
          ansible.builtin.debug:
            msg: "{{ lookup('probeforge.testbed.artifact', 'corrupt') }}"
      rescue:
        - name: Keep the message
          ansible.builtin.set_fact:
            corrupt_error: "{{ ansible_failed_result.msg }}"
    - name: Report
      ansible.builtin.copy:
        dest: "{{ report }}"
        mode: "0644"
        content: "{{ {'present': lookup('probeforge.testbed.artifact', 'present'),
                      'via_option': via_option, 'missing': missing_error,
                      'corrupt': corrupt_error} | to_json }}"
"""


def run_playbook(tmp_path: Path, playbook: str, env: dict[str, str],
                 *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "play.yml").write_text(playbook)
    run_env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "NO_COLOR": "1",
               "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
               **env}
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,",
                           str(tmp_path / "play.yml"), *extra],
                          cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=120)


@pytest.mark.ansible
@pytest.mark.slow
def test_lookup_plugin_in_a_playbook(tmp_path, server):
    present, corrupt = b"present" * 50, b"corrupt" * 50
    manifest = write_manifest(tmp_path / "m.yml", [
        entry("present", present, f"{server.base}/present.tar.gz"),
        entry("missing", b"missing", f"{server.base}/missing.tar.gz"),
        entry("corrupt", corrupt, f"{server.base}/corrupt.tar.gz"),
    ])
    cache, other = tmp_path / "cache", tmp_path / "other"
    for directory in (cache, other):
        directory.mkdir()
        (directory / "present.tar.gz").write_bytes(present)
    (cache / "corrupt.tar.gz").write_bytes(b"C" * len(corrupt))
    env = {artifacts.MANIFEST_ENV: str(manifest), artifacts.CACHE_ENV: str(cache)}
    report = tmp_path / "report.json"
    result = run_playbook(tmp_path, LOOKUP_PLAYBOOK, env, "-e", f"report={report}",
                          "-e", f"other_cache={other}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"msg: {cache / 'present.tar.gz'}" in result.stdout
    got = json.loads(report.read_text())
    assert got["present"] == str(cache / "present.tar.gz")
    assert got["via_option"] == str(other / "present.tar.gz")
    assert (f"missing.tar.gz is missing from {cache}: run `probeforge-artifacts fetch missing` "
            f"on a machine with internet access") in got["missing"]
    assert (f"{cache / 'corrupt.tar.gz'} has sha256 {sha(b'C' * len(corrupt))}, expected "
            f"{sha(corrupt)}: delete it and fetch again") in got["corrupt"]
    assert server.requests == [], "the lookup must never download"

    # Without a rescue the play stops, with the same one line in the error output.
    plain = LOOKUP_PLAYBOOK.split("    - name: The same")[0].replace("'present'", "'missing'")
    result = run_playbook(tmp_path, plain, env)
    assert result.returncode == 2
    assert re.search(r"failed: missing\.tar\.gz is missing from \S+: run `probeforge-artifacts "
                     r"fetch missing` on a machine with internet access, or copy the file there "
                     rf"\(sha256 {sha(b'missing')}\)$", result.stderr + result.stdout, re.M)


@pytest.mark.ansible
def test_lookup_plugin_documentation_renders():
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "NO_COLOR": "1"}
    result = subprocess.run([str(BIN / "ansible-doc"), "-t", "lookup",
                             "probeforge.testbed.artifact"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for text in ("PROBEFORGE_ARTIFACT_CACHE", "PROBEFORGE_ARTIFACT_MANIFEST", "EXAMPLES",
                 "RETURN VALUES"):
        assert text in result.stdout


# --- the real manifest ---------------------------------------------------------------


def test_real_manifest_validates_and_covers_every_build():
    manifest = artifacts.load_manifest()
    assert manifest.path == artifacts.DEFAULT_MANIFEST
    assert set(manifest.groups) == {"tstat", "glimpse", "supervisor"}
    for artifact in manifest.artifacts:
        assert artifact.size is not None, artifact.name
        assert artifact.license, artifact.name
        assert artifact.url.startswith("https://"), artifact.name
        if artifact.git is not None:
            assert artifact.url.endswith(f"/archive/{artifact.git.commit}.tar.gz")
            assert artifact.file == f"{artifact.git.prefix[:-1]}.tar.gz"
    assert [a.name for a in manifest.group("glimpse")] == [
        "glimpse-source", "glimpse-miniupnp", "glimpse-qtsystems"]


def test_real_manifest_pins_what_the_ri_harness_installs():
    manifest = artifacts.load_manifest()
    wheels = manifest.group("supervisor")
    for artifact in wheels:
        assert artifact.url.startswith("https://files.pythonhosted.org/packages/"), artifact.name
        assert artifact.url.endswith("/" + artifact.file)
    files = [a.file.lower().replace("_", "-") for a in wheels]
    for requirement in RI_REQUIREMENTS:
        name, version = requirement.lower().split("==")
        found = [f for f in files if f.startswith(f"{name}-{version}-")
                 or f == f"{name}-{version}.tar.gz"]
        assert found, f"{requirement} has no pinned file"
    pyyaml = {a.name: a.file for a in wheels if a.name.startswith("pyyaml")}
    assert "-cp311-cp311-manylinux" in pyyaml["pyyaml-cp311"]
    assert "-cp312-cp312-manylinux" in pyyaml["pyyaml-cp312"]


def test_docs_name_every_artifact_and_the_exact_git_commands():
    doc = (REPO / "docs" / "artifacts.md").read_text()
    for artifact in artifacts.load_manifest().artifacts:
        assert f"| `{artifact.name}` |" in doc, artifact.name
        if artifact.git:
            assert artifact.git.archive_command(artifact.file) in doc, artifact.name
            assert artifact.git.commit in doc, artifact.name


def _git_pins() -> list[Any]:
    return [pytest.param(a, id=a.name) for a in artifacts.load_manifest().artifacts if a.git]


@pytest.mark.slow
@pytest.mark.parametrize("artifact", _git_pins())
def test_git_archive_pin_matches_the_mirror(tmp_path, artifact):
    owner, repo = artifact.git.repository.removesuffix(".git").split("/")[-2:]
    mirror = MIRRORS / f"{owner}+{repo}" / "repo"
    if not mirror.is_dir():
        pytest.skip(f"no mirror of {owner}/{repo} at {mirror}")
    # Exactly the documented command, run as a partner would (default git settings).
    command = artifact.git.archive_command(artifact.file)
    assert command in (artifact.how or "")
    env = {**os.environ, "GIT_DIR": str(mirror), "GIT_CONFIG_NOSYSTEM": "1",
           "HOME": str(tmp_path)}
    subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=tmp_path, env=env, check=True)
    made = tmp_path / artifact.file
    assert (sha(made.read_bytes()), made.stat().st_size) == (artifact.sha256, artifact.size)
    commit = subprocess.run(["git", "rev-parse", f"{artifact.git.commit[:7]}^{{commit}}"],
                            env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert commit == artifact.git.commit


def test_glimpse_submodule_pins_are_the_commits_the_glimpse_tree_records():
    manifest = artifacts.load_manifest()
    source = manifest.get("glimpse-source").git
    mirror = MIRRORS / "HSAnet+glimpse_client" / "repo"
    if not mirror.is_dir():
        pytest.skip(f"no mirror of HSAnet/glimpse_client at {mirror}")
    tree = subprocess.run(["git", "--git-dir", str(mirror), "ls-tree", source.commit,
                           "3rdparty/miniupnp", "3rdparty/qtsystems"],
                          capture_output=True, text=True, check=True).stdout
    recorded = {line.split()[3]: line.split()[2] for line in tree.splitlines()}
    assert recorded == {"3rdparty/miniupnp": manifest.get("glimpse-miniupnp").git.commit,
                        "3rdparty/qtsystems": manifest.get("glimpse-qtsystems").git.commit}

