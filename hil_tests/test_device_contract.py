# SPDX-License-Identifier: Apache-2.0
"""The device contract of docs/firmware.md and DESIGN.md, checked over SSH on each target."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.mips]


def test_configuration_and_credentials(target):
    listing = target.ssh.run(
        "stat -c '%n %a %U' /etc/mplane/probe.conf /etc/mplane/certs /etc/mplane/certs/ca.pem "
        "/etc/mplane/certs/probe.crt /etc/mplane/certs/probe.key").stdout.split("\n")
    modes = {line.split()[0]: line.split()[1:] for line in listing if line}
    assert modes["/etc/mplane/certs/probe.key"] == ["600", "root"]
    assert modes["/etc/mplane/certs"] == ["700", "root"]
    assert modes["/etc/mplane/probe.conf"][1] == "root"
    # The key is the host's own: its certificate names the host.
    subject = target.ssh.run("grep -c 'BEGIN CERTIFICATE' /etc/mplane/certs/ca.pem").stdout
    assert int(subject) >= 2  # issuing and root CA: the supervisor sends only its leaf
    conf = target.ssh.run("cat /etc/mplane/probe.conf").stdout
    assert f"{target.supervisor_ip4}:" in conf


def test_identity_board_and_release(target):
    assert target.ssh.run("cat /etc/board").stdout.strip() == target.board
    release = dict(line.split("=", 1) for line in
                   target.ssh.run("cat /etc/probeforge-release").stdout.split())
    assert release["host"] == target.name and release["board"] == target.board
    manifest = target.manifest()
    if manifest is not None:
        assert release["build"] == manifest["build"]
    assert target.ssh.run("hostname").stdout.strip() == target.name


def command_lines(target) -> list[list[str]]:
    """Every process's command line, as words."""
    text = target.ssh.run("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; "
                          "done 2>/dev/null").stdout
    return [line.split() for line in text.split("\n") if line.strip()]


def test_services_run(target):
    processes = command_lines(target)
    # The daemon is a Python program: found by its command line, not by name.
    assert any("python" in words[0] and any("probe-daemon" in w for w in words)
               for words in processes), processes
    assert any(words[0].endswith("dropbear") for words in processes), processes
    listening = target.ssh.run("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null").stdout
    # Port 22 (0x0016) in state LISTEN (0A).
    assert any(line.split()[1].endswith(":0016") and line.split()[3] == "0A"
               for line in listening.split("\n")[1:] if len(line.split()) > 3)


@pytest.mark.feature("tstat")
def test_tstat_starts_at_boot(target):
    # docs/firmware.md: rcS starts network, dropbear, the probe daemon, then Tstat.
    links = target.ssh.run("ls /etc/rc.d").stdout.split()
    assert "S70tstat" in links and links.index("S70tstat") > links.index("S60probe-daemon"), \
        links
    status = target.ssh.run("/etc/init.d/tstat status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert any(words[0].endswith("/tstat") and "-l" in words for words in command_lines(target))
    listing = target.ssh.run("stat -c '%n %a %U %F' /etc/tstat /etc/tstat/runtime.conf "
                             "/etc/tstat/tstat.conf /etc/tstat/net.conf /var/log/tstat")
    modes = {line.split()[0]: line.split()[1:] for line in listing.stdout.split("\n") if line}
    # The daemon (root) replaces runtime.conf atomically: file and directory root's.
    assert modes["/etc/tstat"][:3] == ["755", "root", "directory"], modes
    for name in ("runtime.conf", "tstat.conf", "net.conf"):
        assert modes[f"/etc/tstat/{name}"][:2] == ["644", "root"], modes
    assert modes["/var/log/tstat"][2] == "directory", modes


def test_first_boot_ran_exactly_once(target):
    assert target.ssh.run("ls -A /etc/uci-defaults 2>/dev/null || true").stdout.strip() == ""
    marks = target.ssh.run("cat /etc/probeforge-firstboot").stdout.split("\n")
    assert len([m for m in marks if m]) == 1, marks


def test_root_logs_in_only_with_a_key(target):
    dropbear = [words for words in command_lines(target) if words[0].endswith("dropbear")]
    assert dropbear and all("-s" in words for words in dropbear)  # password logins off
    assert target.ssh.run("cat /etc/dropbear/authorized_keys").stdout.strip()
