# SPDX-License-Identifier: Apache-2.0
"""The daemon's settings: one table generates the probe.conf keys and the command-line flags.

probe.conf is INI. ``[mplane]`` says where the supervisor is and how to authenticate,
``[daemon]`` how the daemon itself behaves; each measurement has a section of its own
(``[ping]``, ``[ott]`` ...) with ``enabled = yes|no`` and its options.
"""

import argparse
import configparser
import socket
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "/etc/mplane/probe.conf"


class ConfigError(ValueError):
    """A setting that cannot be used; the text names the key and the fix."""


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise ValueError("expected yes or no")


def _positive(kind: Callable[[str], float | int]) -> Callable[[str], Any]:
    def parse(text: str) -> float | int:
        value = kind(text)
        if value <= 0:
            raise ValueError("must be positive")
        return value
    return parse


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
    number = int(text[:-1] if text[-1:] in "KMG" else text)
    if number <= 0:
        raise ValueError("must be positive")
    return number * scale


def _url(text: str) -> str:
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http(s)://host:port/")
    return text.strip()


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip().lower() not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return text.strip().lower()
    return parse


def _path(text: str) -> Path:
    return Path(text.strip())


def _device(text: str) -> str:
    return text.strip() or socket.gethostname()


@dataclass(frozen=True)
class Setting:
    name: str
    section: str
    parse: Callable[[str], Any]
    default: str | None
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("supervisor_url", "mplane", _url, None,
            "the supervisor's component-facing URL, e.g. https://supervisor:8889/"),
    Setting("tls", "mplane", _bool, "yes",
            "mutual TLS with the host's certificate; 'no' sends plain HTTP (logged as a warning)"),
    Setting("ca_file", "mplane", _path, "/etc/mplane/certs/ca.pem",
            "CA certificates (issuing and root) the supervisor's certificate must chain to"),
    Setting("cert_file", "mplane", _path, "/etc/mplane/certs/probe.crt",
            "this probe's certificate"),
    Setting("key_file", "mplane", _path, "/etc/mplane/certs/probe.key",
            "this probe's private key (mode 0600)"),
    Setting("device", "mplane", _device, "",
            "this probe's name in the source.device metadata of every capability, which keeps "
            "probes with the same measurements apart at a supervisor; empty: the host name"),
    Setting("registration_path", "mplane", str, "/register/capability",
            "where capabilities are registered"),
    Setting("specification_path", "mplane", str, "/show/specification",
            "where specifications are polled"),
    Setting("result_path", "mplane", str, "/register/result",
            "where receipts, results and exceptions are posted"),
    Setting("poll_interval", "mplane", _positive(float), "5",
            "seconds between specification polls (the supervisor may change it)"),
    Setting("reregister_interval", "mplane", _positive(float), "300",
            "seconds between capability re-registrations (a restarted supervisor forgets them)"),
    Setting("timeout", "mplane", _positive(float), "15",
            "seconds before a request to the supervisor is abandoned"),
    Setting("backoff_max", "mplane", _positive(float), "60",
            "longest wait between reconnection attempts, in seconds"),
    Setting("spool_dir", "daemon", _path, "/var/lib/probe-daemon/spool",
            "where outgoing results wait for the supervisor (survives restarts)"),
    Setting("spool_max_messages", "daemon", _positive(int), "2000",
            "most messages kept while the supervisor is away; the oldest go first"),
    Setting("spool_max_bytes", "daemon", _size, "8M",
            "most bytes kept in the spool; the oldest messages go first"),
    Setting("max_jobs", "daemon", _positive(int), "16",
            "measurements running at once; more are refused with an exception"),
    Setting("log_target", "daemon", _choice("stderr", "syslog"), "stderr",
            "where logs go"),
    Setting("log_level", "daemon", _choice("debug", "info", "warning", "error"), "info",
            "least severe level logged"),
)


@dataclass(frozen=True)
class Config:
    values: Mapping[str, Any]
    measurement_sections: Mapping[str, Mapping[str, str]]
    path: Path | None

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def measurement_enabled(self, name: str) -> bool:
        section = self.measurement_sections.get(name, {})
        try:
            return _bool(section.get("enabled", "yes"))
        except ValueError:
            raise ConfigError(f"[{name}] enabled: expected yes or no") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every setting as a flag, e.g. --supervisor-url; a flag beats the config file."""
    for setting in SETTINGS:
        parser.add_argument(f"--{setting.name.replace('_', '-')}", dest=setting.name,
                            metavar=setting.name.upper(),
                            help=f"{setting.help} ([{setting.section}] {setting.name}, "
                                 f"default {setting.default or 'none'})")


def load(path: Path | None, overrides: Mapping[str, str | None] | None = None) -> Config:
    parser = configparser.ConfigParser(interpolation=None)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except FileNotFoundError:
            raise ConfigError(f"{path} does not exist: pass --config or create it") from None
        except configparser.Error as exc:
            raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None
    known = {(s.section, s.name) for s in SETTINGS}
    for section in ("mplane", "daemon"):
        if parser.has_section(section):
            for key in parser[section]:
                if (section, key) not in known:
                    raise ConfigError(f"{path}: [{section}] {key} is not a setting "
                                      "(probe-daemon --help lists them)")
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = (overrides or {}).get(setting.name)
        if raw is None and parser.has_option(setting.section, setting.name):
            raw = parser.get(setting.section, setting.name)
        if raw is None:
            raw = setting.default
        if raw is None:
            raise ConfigError(f"[{setting.section}] {setting.name} is not set: {setting.help}")
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"[{setting.section}] {setting.name} = {raw!r}: {exc}") from None
    sections = {name: dict(parser[name]) for name in parser.sections()
                if name not in ("mplane", "daemon")}
    return Config(values=values, measurement_sections=sections, path=path)
