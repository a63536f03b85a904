# SPDX-License-Identifier: Apache-2.0
"""Tstat logging switched on for a time window: the mPlane "Tstat proxy" capabilities.

A running ``tstat -T runtime.conf`` re-reads its runtime configuration when the file's mtime
changes. Each ``tstat-log_*`` capability switches one class of Tstat logging on in that file
for the specification's window (``now ... future`` until interrupted, ``now + 10m``, or an
absolute range) and switches it back afterwards; the result row says where Tstat writes its
output and which of its files appeared or grew meanwhile. The log lines themselves stay on
the probe.

=====================================  ===================================================
capability                             runtime.conf settings switched on
=====================================  ===================================================
``tstat-log_tcp_complete-core``        ``[log] log_tcp_complete``
``tstat-log_tcp_complete-end_to_end``  ``[options] tcplog_end_to_end`` + ``log_tcp_complete``
``tstat-log_tcp_complete-tcp_options`` ``[options] tcplog_options`` + ``log_tcp_complete``
``tstat-log_tcp_complete-p2p_stats``   ``[options] tcplog_p2p`` + ``log_tcp_complete``
``tstat-log_tcp_complete-layer7``      ``[options] tcplog_layer7`` + ``log_tcp_complete``
``tstat-log_http_complete``            ``[log] log_http_complete``
``tstat-log_rrds``                     ``[log] rrd_engine``
``tstat-exporter_log``                 nothing: reports the files Tstat wrote in the window
=====================================  ===================================================

The ``tcplog_*`` sets are extra columns of ``log_tcp_complete``, so they switch that log on
too, as the 2015 proxy did (which then forgot to switch it off again).

Every setting is reference-counted: overlapping windows keep it on until the last one ends,
and then it gets back the value it had before the first one began (not blindly ``0``). Edits
change only the value of that one line, and replace the file atomically (temporary file in the
same directory, fsync, rename; same mode and owner) so tstat never reads half a file.

Crash safety: before the first edit of a setting, its original value goes into the state file
(option ``state_file``). A daemon killed with a class switched on leaves it there;
``recover()``, which the daemon calls at startup, puts those values back. Until recovery
succeeded no class is switched on, so a stale "on" is never mistaken for an original.

Not offered, because they cannot be made real here: ``tstat-exporter_rrd`` (reading RRDs
needs librrd, not the standard library) and ``tstat-exporter_streaming`` (it streamed log
lines to an mPlane repository whose receiving side and wire format are gone with the 2015
project); ``tstat-exporter_log`` no longer uploads (that took a separate ``math_probe``
binary and a repository) and reports where the logs are instead.

Timing facts from Tstat's source (tstat.c, param.h): tstat looks at the mtime (whole seconds)
every 21 s and reloads after three further unchanged looks, i.e. about 1 to 1.5 minutes after
an edit, and only while packets arrive (the check runs in the packet loop); shorter windows
edit the file without changing what tstat logs. A reload that changes the set of logs makes
tstat start a new ``<date>.out`` output directory. Keys absent from runtime.conf keep their
current value on reload, so a class can only be switched back off if its line exists.
"""

import fnmatch
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from probe_daemon import __version__
from probe_daemon.measurements.base import (
    REGISTRY_PROBEFORGE,
    CapabilityTemplate,
    Job,
    MeasurementError,
    Options,
)
from probe_daemon.when import MAX_FUTURE

log = logging.getLogger(__name__)

OPTIONS: dict[str, tuple[str, str]] = {
    "binary": ("tstat", "the Tstat executable, a path or a name looked up on PATH; the "
                        "capabilities are offered only where it exists"),
    "runtime_conf": ("/etc/tstat/runtime.conf", "the runtime configuration the running tstat "
                     "was started with (-T); edited in place"),
    "log_dir": ("/var/log/tstat", "Tstat's output directory (-s), reported in results"),
    "rrd_dir": ("/var/lib/tstat/rrd", "Tstat's RRD directory (-r), reported by tstat-log_rrds"),
    # The 2015 proxy's capabilities had no parameter, which the mPlane RI client (0.9.0)
    # refuses to specify ("Specifications must have parameter values"): the capture interface
    # is the one parameter, and it is also what tells a client which traffic Tstat sees.
    "interface": ("*", "the interface Tstat captures on, offered as observer.interface (\"*\": "
                       "any value is accepted)"),
    "state_file": ("/var/lib/probe-daemon/tstat-state.json", "where the original values of "
                   "switched settings are kept, so a restart can put them back"),
}
ELEMENTS: dict[str, tuple[str, str]] = {
    "tstat.log.class": ("string", "the Tstat runtime.conf settings the measurement switched "
                                  "on, comma-separated"),
    "tstat.log.path": ("string", "the directory on the probe where Tstat writes that output"),
    "tstat.log.files": ("natural", "how many of Tstat's files there appeared or changed "
                                   "during the window"),
    "tstat.log.bytes": ("natural", "how many bytes those files grew by during the window"),
    "tstat.log.names": ("string", "those files, relative to tstat.log.path, comma-separated"),
}

WHEN = "now ... future"
LOG_RESULTS = ("start", "end", "tstat.log.class", "tstat.log.path", "tstat.log.files",
               "tstat.log.bytes", "tstat.log.names")
EXPORTER_RESULTS = ("start", "end", "tstat.log.path", "tstat.log.files", "tstat.log.bytes",
                    "tstat.log.names")
# What the 2015 proxy announced; clients that pick components by System_type still find it.
METADATA = {"System_type": "tStat", "System_ID": "tStat-Proxy", "System_version": __version__}

# runtime.conf section of every setting a capability may switch.
SECTIONS = {
    "log_tcp_complete": "log", "log_http_complete": "log", "rrd_engine": "log",
    "tcplog_end_to_end": "options", "tcplog_options": "options", "tcplog_p2p": "options",
    "tcplog_layer7": "options",
}
ON = "1"


@dataclass(frozen=True)
class TstatClass:
    keys: tuple[str, ...]  # runtime.conf settings switched on during the window
    files: tuple[str, ...]  # file-name patterns of the output this class produces
    rrd: bool = False  # output goes to rrd_dir instead of log_dir


# Tstat may gzip its logs (log_tcp_complete.gz), hence the trailing "*".
_TCP = ("log_tcp_complete*",)
CLASSES: dict[str, TstatClass] = {
    "tstat-log_tcp_complete-core": TstatClass(("log_tcp_complete",), _TCP),
    "tstat-log_tcp_complete-end_to_end": TstatClass(("log_tcp_complete", "tcplog_end_to_end"),
                                                    _TCP),
    "tstat-log_tcp_complete-tcp_options": TstatClass(("log_tcp_complete", "tcplog_options"),
                                                     _TCP),
    "tstat-log_tcp_complete-p2p_stats": TstatClass(("log_tcp_complete", "tcplog_p2p"), _TCP),
    "tstat-log_tcp_complete-layer7": TstatClass(("log_tcp_complete", "tcplog_layer7"), _TCP),
    "tstat-log_http_complete": TstatClass(("log_http_complete",), ("log_http_complete*",)),
    "tstat-log_rrds": TstatClass(("rrd_engine",), ("*.rrd",), rrd=True),
    "tstat-exporter_log": TstatClass((), ("*",)),
}

# The only line form both tstat's ini reader and this editor agree on: "key = value", an
# optional comment after whitespace (tstat rejects "1#comment" as a syntax error and exits).
_SETTING = re.compile(rb"^([ \t]*)([A-Za-z0-9_]+)([ \t]+=[ \t]+)([0-9]+)((?:[ \t]+#.*)?[ \t]*)$")
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class _Found:
    index: int
    match: re.Match[bytes]


def _words(line: bytes) -> list[bytes]:
    # How tstat tokenises a line: strtok on space, tab and newline.
    return [word for word in re.split(rb"[ \t]+", line) if word]


def _find(lines: list[bytes], key: str, path: Path) -> _Found:
    """The one well-formed line setting ``key`` in its section, or why there is none."""
    section = SECTIONS[key]
    name = key.encode()
    current: str | None = None
    hits: list[int] = []
    for index, line in enumerate(lines):
        words = _words(line)
        if not words or words[0].startswith(b"#"):
            continue
        if words[0].startswith(b"["):
            current = words[0].decode(errors="replace").lower().strip("[]")
            continue
        if current == section and (words[0] == name or words[0].startswith(name + b"=")):
            hits.append(index)
    fix = f"`{key} = 0` in the [{section}] section of {path}"
    if not hits:
        raise MeasurementError(
            f"{path} has no {key} setting in [{section}]; add the line {fix} (tstat keeps "
            "its current value for absent keys, so the probe could not switch it back off)")
    if len(hits) > 1:
        numbers = ", ".join(str(i + 1) for i in hits)
        raise MeasurementError(f"{path} sets {key} on lines {numbers}; keep only one line {fix}")
    match = _SETTING.match(lines[hits[0]])
    if match is None:
        text = lines[hits[0]].decode(errors="replace").strip()
        raise MeasurementError(f"{path} line {hits[0] + 1} ({text!r}) is not in `key = 0|1` "
                               f"form; write it as {fix} or `{key} = 1`")
    return _Found(hits[0], match)


def read_settings(data: bytes, keys: tuple[str, ...] | list[str], path: Path) -> dict[str, str]:
    """The current values of ``keys`` in a runtime.conf, checking each line can be edited."""
    lines = data.split(b"\n")
    return {key: _find(lines, key, path).match.group(4).decode() for key in keys}


def set_settings(data: bytes, values: Mapping[str, str], path: Path) -> bytes:
    """``data`` with only the value of each setting replaced; every other byte kept."""
    lines = data.split(b"\n")
    for key, value in values.items():
        found = _find(lines, key, path)
        head, name, equals, _, tail = found.match.groups()
        lines[found.index] = head + name + equals + value.encode() + tail
    return b"\n".join(lines)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: Path, data: bytes, like: os.stat_result | None = None) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``.

    Readers see the old file or the new one, never a mix; ``like`` gives mode and owner.
    """
    import tempfile  # here, not at start: see _on_path

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe-daemon",
                                    dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            if like is not None:
                os.fchmod(out.fileno(), stat.S_IMODE(like.st_mode))
                if (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
                    os.fchown(out.fileno(), like.st_uid, like.st_gid)
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _on_path(name: str) -> bool:
    """Whether ``name`` is an executable file in a $PATH directory: shutil.which without
    importing shutil, which loads bz2 and lzma (0.4 MB of an idle MiniProbe's memory)."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return True
    return False


def _now() -> datetime:
    return datetime.now(UTC)


def scan(root: Path, patterns: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file under ``root`` whose name matches, by relative path."""
    found: dict[str, tuple[int, int]] = {}
    for directory, _, names in os.walk(root):
        for name in names:
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
                continue
            path = os.path.join(directory, name)
            try:
                info = os.stat(path)
            except OSError:  # rotated away between listing and stat
                continue
            found[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return found


def changes(before: Mapping[str, tuple[int, int]],
            after: Mapping[str, tuple[int, int]]) -> tuple[list[str], int]:
    """Files that appeared or changed, and how many bytes they grew by."""
    changed = sorted(name for name, info in after.items() if before.get(name) != info)
    grown = sum(max(0, after[name][0] - before.get(name, (0, 0))[0]) for name in changed)
    return changed, grown


class TstatMeasurement:
    name = "tstat"

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        read = Options(options, OPTIONS)
        if read.unknown():
            log.warning("tstat: ignoring unknown options %s", ", ".join(read.unknown()))
        self.binary = read.text("binary")
        self.runtime_conf = Path(read.text("runtime_conf"))
        self.log_dir = Path(read.text("log_dir"))
        self.rrd_dir = Path(read.text("rrd_dir"))
        self.state_file = Path(read.text("state_file"))
        self.interface = read.text("interface")
        self._lock = threading.Lock()
        # Per setting: how many running windows want it on, and its value before the first.
        self._refs: dict[str, int] = {}
        self._originals: dict[str, str] = {}
        self._recovered = False

    # -- what is offered --------------------------------------------------------------------

    def capabilities(self) -> list[CapabilityTemplate]:
        return [CapabilityTemplate(
            label=label, parameters={"observer.interface": self.interface}, when=WHEN,
            registry=REGISTRY_PROBEFORGE,
            results=LOG_RESULTS if cls.keys else EXPORTER_RESULTS, metadata=METADATA)
            for label, cls in CLASSES.items()]

    def unavailable(self) -> str | None:
        if os.sep in self.binary:
            found = os.path.isfile(self.binary) and os.access(self.binary, os.X_OK)
        else:
            found = _on_path(self.binary)
        if not found:
            where = "" if os.sep in self.binary else " on PATH"
            return (f"Tstat is not installed: no executable {self.binary!r}{where} "
                    "(install Tstat or set [tstat] binary)")
        if not self.runtime_conf.is_file():
            return (f"no Tstat runtime configuration {self.runtime_conf} (tstat must run with "
                    "-T FILE; set [tstat] runtime_conf to that file)")
        return None

    # -- running a window -------------------------------------------------------------------

    def run(self, job: Job) -> Iterator[Mapping[str, Any]]:
        cls = CLASSES.get(job.label)
        if cls is None:
            raise MeasurementError(f"tstat has no capability {job.label!r}")
        start, end = job.when.bounds(job.received)
        if end is not None and end <= start:
            raise MeasurementError(f"{job.label} needs a time window that has not ended, e.g. "
                                   "`now ... future` (until interrupted) or `now + 10m`")
        if job.stop.wait(max(0.0, (start - _now()).total_seconds())):
            return
        root = self.rrd_dir if cls.rrd else self.log_dir
        before = scan(root, cls.files)
        begun = _now()
        self._acquire(cls.keys)
        try:
            remaining = (end - _now()).total_seconds() if end else MAX_FUTURE.total_seconds()
            job.stop.wait(max(0.0, remaining))
        finally:
            self._release(cls.keys)
        ended = _now()
        names, grown = changes(before, scan(root, cls.files))
        row: dict[str, Any] = {"start": begun, "end": ended, "tstat.log.path": str(root),
                               "tstat.log.files": len(names), "tstat.log.bytes": grown,
                               "tstat.log.names": ",".join(names)}
        if cls.keys:
            row["tstat.log.class"] = ",".join(cls.keys)
        yield row

    # -- switching settings -----------------------------------------------------------------

    def _conf_path(self) -> Path:
        # Edit the file a symlink points to: renaming over the link would replace the link.
        return Path(os.path.realpath(self.runtime_conf))

    def _acquire(self, keys: tuple[str, ...]) -> None:
        if not keys:
            return
        with self._lock:
            if not self._recovered:
                self._recover_locked()
            path = self._conf_path()
            current = read_settings(self._read(path), keys, path)
            _check_writable(path)
            new = {key: value for key, value in current.items() if key not in self._originals}
            if new:
                # Recorded before the edit: a kill between the two leaves a harmless record.
                self._write_state({**self._originals, **new})
                self._originals.update(new)
                log.info("tstat: switching on %s (originally %s)", ", ".join(new),
                         ", ".join(f"{k} = {v}" for k, v in new.items()))
            for key in keys:
                self._refs[key] = self._refs.get(key, 0) + 1
            try:
                self._sync_locked()
            except BaseException:
                # Undo as a release would: whatever did get written is put back and forgotten.
                self._unref_locked(keys)
                try:
                    self._sync_locked()
                except MeasurementError as exc:
                    log.warning("tstat: %s", exc)
                raise

    def _release(self, keys: tuple[str, ...]) -> None:
        if not keys:
            return
        with self._lock:
            self._unref_locked(keys)
            try:
                self._sync_locked()
            except MeasurementError as exc:
                # The state file still holds the originals: the next job or restart retries.
                raise MeasurementError(f"could not switch Tstat back: {exc}; the probe daemon "
                                       "retries at the next Tstat job and at restart") from None

    def _unref_locked(self, keys: tuple[str, ...]) -> None:
        """One window fewer wants each of ``keys`` on; a count reaching 0 is dropped."""
        for key in keys:
            self._refs[key] -= 1
            if not self._refs[key]:
                del self._refs[key]

    def _sync_locked(self) -> None:
        """Make runtime.conf say on for held settings and the original for released ones."""
        path = self._conf_path()
        wanted = {key: ON if self._refs.get(key) else original
                  for key, original in self._originals.items()}
        _apply(path, wanted)
        released = [key for key in self._originals if not self._refs.get(key)]
        if released:
            for key in released:
                del self._originals[key]
            log.info("tstat: %s restored", ", ".join(released))
            self._write_state(self._originals)

    # -- crash safety -----------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Put back the settings a killed daemon left switched on; call once at startup.

        Reads the state file; for each setting recorded there and not held by a window of this
        process, restores the recorded original value in the runtime.conf it was taken from,
        then removes the state file. Returns the settings restored (``"key = value"``).
        Idempotent and safe to call at any time. Never raises, so one broken runtime.conf
        cannot stop the daemon: on failure it logs why and keeps the state file, and the next
        Tstat job retries first (failing with the reason, and switching nothing on, until
        runtime.conf is fixed).
        """
        with self._lock:
            try:
                return self._recover_locked()
            except MeasurementError as exc:
                log.error("tstat: %s", exc)
                return []

    def _recover_locked(self) -> list[str]:
        state = self._read_state()
        if state is None:
            self._recovered = True
            return []
        conf, originals = state
        restored = [f"{key} = {value}" for key, value in originals.items()
                    if key not in self._refs]
        if conf != self._conf_path():
            # The daemon was reconfigured since: put back the file the edits were made in.
            try:
                _apply(conf, originals)
            except MeasurementError as exc:
                raise MeasurementError(f"{exc}; if {conf} is no longer used, delete "
                                       f"{self.state_file}") from None
            self.state_file.unlink(missing_ok=True)
            if self._originals:
                self._write_state(self._originals)
        else:
            for key, value in originals.items():
                self._originals.setdefault(key, value)
            self._sync_locked()
        if restored:
            log.warning("tstat: restored %s in %s, left switched on by an earlier run",
                        ", ".join(restored), conf)
        self._recovered = True
        return restored

    def _read_state(self) -> tuple[Path, dict[str, str]] | None:
        try:
            text = self.state_file.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise MeasurementError(
                f"cannot read {self.state_file} ({exc.strerror}): make "
                f"{self.state_file.parent} a directory the probe daemon can write, or set "
                "[tstat] state_file") from None
        try:
            data = json.loads(text)
            conf = Path(data["runtime_conf"])
            originals = {str(k): str(v) for k, v in data["originals"].items()}
            if not all(k in SECTIONS and _DIGITS.fullmatch(v) for k, v in originals.items()):
                raise ValueError("unexpected setting")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MeasurementError(
                f"{self.state_file} is unreadable ({exc}); check the Tstat settings in "
                f"{self.runtime_conf} by hand, then delete {self.state_file}") from None
        return conf, originals

    def _write_state(self, originals: Mapping[str, str]) -> None:
        body = json.dumps({"runtime_conf": str(self._conf_path()), "originals": dict(originals),
                           "pid": os.getpid(), "written": _now().isoformat()}, indent=1)
        try:
            if not originals:
                self.state_file.unlink(missing_ok=True)
                return
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            replace_atomically(self.state_file, body.encode() + b"\n")
        except OSError as exc:
            raise MeasurementError(
                f"cannot record Tstat's original settings in {self.state_file} "
                f"({exc.strerror}): make {self.state_file.parent} writable by the probe daemon "
                "or set [tstat] state_file") from None

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise MeasurementError(f"cannot read {path}: {exc.strerror} (set [tstat] "
                                   "runtime_conf to the file tstat runs with)") from None


def _check_writable(path: Path) -> None:
    uid = os.geteuid()
    if not os.access(path, os.W_OK):
        raise MeasurementError(f"{path} is not writable by the probe daemon (uid {uid}): make "
                               "the daemon's user its owner or run the daemon as root")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise MeasurementError(f"{path.parent} is not writable by the probe daemon (uid {uid}), "
                               f"which it needs to replace {path.name} atomically: make the "
                               "directory writable by the daemon's user or run it as root")


def _apply(path: Path, values: Mapping[str, str]) -> None:
    """Set ``values`` in the runtime.conf at ``path``, rewriting it only if anything changes."""
    if not values:
        return
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise MeasurementError(f"cannot read {path}: {exc.strerror} (set [tstat] runtime_conf "
                               "to the file tstat runs with)") from None
    updated = set_settings(data, values, path)
    if updated == data:
        return  # an unchanged mtime spares tstat a reload and a new output directory
    _check_writable(path)
    try:
        replace_atomically(path, updated, like=info)
    except OSError as exc:
        raise MeasurementError(f"cannot replace {path}: {exc.strerror}; make its directory "
                               "writable by the probe daemon and keep the file's owner "
                               "reachable (run the daemon as root)") from None
