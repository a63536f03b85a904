# SPDX-License-Identifier: Apache-2.0
"""bench/appliance.py's pure parts: the builder's and debootstrap's steps from their timed
progress lines, the comparison command and what its failure says, the ratios, and the section
it writes, without building or booting anything; and bench/report.py's runners on small
commands.

No end-to-end test: the benchmark builds the appliance from an empty cache and then six more
times, boots it three times and runs debootstrap, over half an hour on two cores."""

import argparse
import json
from pathlib import Path

import pytest

from bench import appliance as bench
from bench import report

# What `python -m appliance image --json` prints on stderr, with when each line came.
BUILDER_LINES = [
    (1.5, "rootfs: mmdebstrap debian bookworm from http://deb.debian.org/debian (29 packages "
          "asked, 0 .debs cached)"),
    (61.0, "rootfs: 218 .debs in the cache"),
    (61.2, "provision: ansible-playbook 3 role steps into /tmp/x/tree"),
    (70.0, "provision:   appliance_base : Ensure Cockpit is socket-activated"),
    (92.0, "provision: done in 31 s, 40 changed"),
    (99.0, "base 3ce9b72f2960332f ready in 98 s"),
    (99.5, "disk: grub images for BIOS and UEFI"),
    (104.0, "disk: ext4 root from the tree (2047 MiB, mkfs.ext4 -d)"),
    (120.0, "disk: hybrid GPT (BIOS boot + ESP + root)"),
    (124.0, "export: compressed qcow2"),
    (170.0, "export: streamOptimized VMDK"),
    (190.0, "export: OVF descriptor, manifest and OVA"),
    (199.0, "images of base 3ce9b72f2960332f in /tmp/x/out (100 s)"),
]


def test_build_steps_run_from_each_steps_first_line_to_the_next():
    steps = bench.build_steps(report.Timed(200.0, "{}", BUILDER_LINES))
    assert steps == pytest.approx({
        bench.BUILD_FIRST: 1.5, "root filesystem: mmdebstrap": 59.7,
        "roles through the chroot connection": 30.8, "generalising, the base's record": 7.5,
        "disk: grub, ESP, ext4 root, GPT": 24.5, "compressed qcow2": 46.0,
        "streamOptimized VMDK": 20.0, "OVA, checksums, manifest": 10.0})
    assert sum(steps.values()) == pytest.approx(200.0)
    # A cached base: its steps are not there, the images' are.
    cached = [(0.8, "base 3ce9b72f2960332f is cached (/c/base/3ce9)"),
              (1.0, "disk: grub images for BIOS and UEFI"), (30.0, "export: compressed qcow2")]
    assert bench.build_steps(report.Timed(50.0, "", cached)) == pytest.approx(
        {bench.BUILD_FIRST: 1.0, "disk: grub, ESP, ext4 root, GPT": 29.0,
         "compressed qcow2": 20.0})


def test_summary_is_the_last_line_of_stdout():
    assert bench.summary_of('noise\n{"changed": false, "directory": "/o"}\n') == \
        {"changed": False, "directory": "/o"}
    with pytest.raises(report.Failed, match="no summary"):
        bench.summary_of("\n")


def test_debootstrap_command_is_the_plain_tool_with_the_recipes_packages():
    command = bench.debootstrap_command(["systemd-sysv", "cockpit-ws"], "bookworm",
                                        Path("/t/root"), "http://deb.debian.org/debian")
    assert command == ["debootstrap", "--variant=minbase", "--components=main",
                       "--include=systemd-sysv,cockpit-ws", "bookworm", "/t/root",
                       "http://deb.debian.org/debian"]
    ubuntu = bench.debootstrap_command(["cockpit-ws"], "noble", Path("/t"), "http://u",
                                       components=("main", "universe"),
                                       keyring=Path("/k.gpg"))
    assert "--components=main,universe" in ubuntu and "--keyring=/k.gpg" in ubuntu


DEBOOTSTRAP_LOG = """\
dpkg: error processing package dconf-service (--configure):
 dependency problems - leaving unconfigured
Errors were encountered while processing:
 dconf-service
 python3-cryptography
 dconf-gsettings-backend:amd64
Processing triggers for libc-bin (2.36-9+deb12u13) ...
"""


def test_unconfigured_reads_dpkgs_last_error_list():
    assert bench.unconfigured(DEBOOTSTRAP_LOG) == ["dconf-service", "python3-cryptography",
                                                   "dconf-gsettings-backend"]
    assert bench.unconfigured("I: Base system installed successfully.\n") == []


def test_ratio():
    assert bench.ratio(600.0, 200.0) == "3.00x"
    assert bench.ratio(None, 200.0) == "—" and bench.ratio(600.0, 0.0) == "—"


def test_step_times_of_a_tool_without_its_markers_is_all_start_up():
    assert report.step_times([(1.0, "hello")], 5.0, bench.DEBOOTSTRAP_STEPS, "start-up") == \
        {"start-up": 5.0}


def _steps(total: float) -> dict[str, float]:
    return {bench.BUILD_FIRST: 2.0, "root filesystem: mmdebstrap": total * 0.4,
            "roles through the chroot connection": total * 0.6 - 2.0}


def _results(**changes: object) -> bench.Results:
    args = argparse.Namespace(runs=2, boots=2, quick=False, tmpdir=None, keep=False,
                              debootstrap_runs=1, no_debootstrap=False)
    results = bench.Results(
        args, cold=bench.Build(200.0, _steps(200.0), True, report.Usage(200.0, 150.0, 190.0)),
        warm=[bench.Build(290.0, _steps(290.0), True), bench.Build(310.0, _steps(310.0), True)],
        reuse=[0.6, 0.5], seed=28.0,
        sizes={"qcow2": 313 << 20, "vmdk": 302 << 20, "ova": 302 << 20, "tree": 818 << 20,
               "seed": 8 << 20, "debs": 150 << 20},
        debs=218, packages=219, asked=29, kernel="6.1.0-50-amd64",
        name="probeforge-appliance-x", disk_bytes=4 << 30, omitted=["tstat"],
        boots=[bench.Boot("tcg", 45.0, 47.0, 48.0, 0.6),
               bench.Boot("tcg", 43.0, 45.0, None, 0.8)],
        debootstrap=bench.Debootstrap(
            "1.0.128", ["debootstrap", "--variant=minbase", "bookworm", "DIR"], [160.0],
            [{"start-up": 1.0, "index, resolving, downloads": 40.0,
              "unpacking and configuring": 119.0}], usages=[report.Usage(160.0, 120.0, 280.0)],
            packages=230, tree_bytes=700 << 20, cache_bytes=20 << 20,
            extra=["dbus-user-session", "python3-cffi-backend"],
            as_is_failed=["dconf-service", "python3-cryptography"], as_is_seconds=150.0),
        loads={"start": (0.5, 0.4, 0.3), "end": (2.0, 1.0, 0.5)},
        phases={"builds": 1500.0, "total": 2400.0}, code="commit abc1234")
    for name, value in changes.items():
        setattr(results, name, value)
    return results


def test_rows_judge_the_warm_build_against_its_budget():
    rows = {row.what: row for row in bench.build_rows(_results())}
    warm = rows["warm: .debs cached, base and images made again"]
    assert warm.median == 300.0 and warm.verdict == "within budget"
    assert rows["… of which the root filesystem (mmdebstrap, .debs downloaded)"].samples == \
        [80.0]
    over = bench.build_rows(_results(warm=[bench.Build(400.0, {}, True)]))
    assert over[2].verdict == "**over budget**"
    assert rows["reuse: nothing changed, nothing made"].median == pytest.approx(0.55)
    assert rows["debootstrap, cold: the root filesystem alone"].samples == [160.0]


def test_step_table_puts_cold_and_warm_side_by_side():
    table = bench.step_table(_results())
    assert "| root filesystem: mmdebstrap | 80.0 | 120.0 | 116.0-124.0 |" in table
    assert "| **whole build** | 200.0 | 300.0 | — |" in table
    assert "disk" not in table  # no step without a figure


def test_sharing_table_says_what_else_used_the_cpu():
    table = bench.sharing_table(_results())
    # The machine was busier than the cold build alone: 40 s of other CPU, 0.2 cores.
    assert "| cold build | 200 | 150 | 40 | 0.20 |" in table
    assert "| debootstrap 1 | 160 | 120 | 160 | 1.00 |" in table
    assert "warm build" not in table  # no usage recorded for those
    # The machine busy for less than the run's own figure (the counters' granularity):
    # nothing else ran, not less than nothing.
    assert report.Usage(10.0, 5.0, 4.9).others == 0.0


def test_the_kvm_budget_is_not_applied_to_tcg_boots():
    rows = bench.boot_rows(_results())
    assert rows[1].budget is None and "TCG" in rows[1].budget_text
    assert rows[2].samples == [48.0]  # the boot whose probe never registered is left out
    kvm = bench.boot_rows(_results(boots=[bench.Boot("kvm", 5.0, 12.0, 15.0, 0.5)]))
    assert kvm[1].verdict == "within budget"


def test_comparison_gives_the_like_for_like_ratio_and_why_the_list_grew():
    text = " ".join(bench.comparison(_results()).split())
    # 160 s against the cold build's mmdebstrap step, 80 s.
    assert "That is **2.00x** the time of the same step of probeforge's cold build" in text
    assert "0.80x the whole cold build (200 s) and 0.53x the warm build (300 s)" in text
    assert "of which 20.0 MiB the .debs it leaves" in text
    assert "failed after 150 s, dpkg leaving dconf-service, python3-cryptography" in text
    assert "`dbus-user-session`, `python3-cffi-backend`" in text
    plain = _results()
    assert plain.debootstrap is not None
    plain.debootstrap.as_is_failed = None
    assert "failed" not in bench.comparison(plain)
    none = bench.Debootstrap("1.0.128", error="unconfigured: cockpit-ws")
    assert bench.comparison(_results(debootstrap=none)) == \
        "**Against debootstrap**: no figure, unconfigured: cockpit-ws."
    assert "--no-debootstrap" in bench.comparison(_results(debootstrap=None))


def test_section_is_between_its_markers_and_keeps_other_sections(tmp_path):
    text = bench.section(_results(), ".venv/bin/python bench/appliance.py --write x.md")
    assert text.startswith(bench.START) and text.rstrip().endswith(bench.END)
    flat = " ".join(text.split())
    assert "| OVA (descriptor, manifest, VMDK) | 302.0 MiB |" in text
    assert "| .debs downloaded by the cold build (218) | 150.0 MiB |" in text
    assert "Left out of this image: tstat" in flat
    assert "0.50 / 0.40 / 0.30 at the start; 2.00 / 1.00 / 0.50 at the end" in flat
    assert "40.0 min in all (builds 25.0 min)" in flat
    assert "known to within 0.7 s" in flat  # the median window of the two boots
    assert ("`debootstrap --variant=minbase bookworm DIR` where PACKAGES are the recipe's 29 "
            "(the kernel among them) and dbus-user-session, python3-cffi-backend") in flat
    assert all(len(line) <= 95 or line.startswith("|") for line in text.splitlines())
    # Written into a file with other sections, those stay.
    doc = tmp_path / "benchmarks.md"
    doc.write_text(report.HEADER + "\n<!-- bench:pki:start -->\nPKI\n<!-- bench:pki:end -->\n")
    report.write_section(doc, text, bench.START, bench.END)
    report.write_section(doc, text, bench.START, bench.END)
    written = doc.read_text()
    assert written.count(bench.START) == 1 and "PKI" in written


def test_budgets_and_the_deb_cache_are_said_from_the_figures():
    text = " ".join(bench.notes(_results()).split())
    assert "The warm build took 300 s (median), within the 5 min budget." in text
    assert "under TCG the figure (46 s)" in text
    # Warm 120 s (median of 116 and 124) against 80 s cold for the root filesystem.
    assert "did not shorten the root filesystem step in this run: 120 s warm" in text
    busy = _results(warm=[bench.Build(350.0, {}, True, report.Usage(350.0, 200.0, 550.0))],
                    boots=[bench.Boot("kvm", 5.0, 25.0, 30.0, 0.5)])
    text = " ".join(bench.notes(busy).split())
    assert "350 s (median), **over** the 5 min budget, while everything else on the machine " \
        "kept 1.0 of its" in text
    assert "took 25 s with KVM, **over** the 20 s budget" in text
    assert "did not shorten" not in text


def test_section_without_boots_or_debootstrap_still_renders():
    text = bench.section(_results(boots=[], debootstrap=None, cold=None, warm=[]), "x")
    assert "not measured" in text and "`--no-debootstrap`" in text


def test_run_timed_times_progress_lines_and_keeps_stdout_apart(tmp_path):
    log = tmp_path / "log"
    timed = report.run_timed(["sh", "-c", "echo '{\"a\": 1}'; echo one >&2; echo two >&2"],
                             log, "sh")
    assert json.loads(timed.stdout) == {"a": 1}
    assert [line for _, line in timed.lines] == ["one", "two"]
    assert timed.lines[0][0] <= timed.lines[1][0] <= timed.seconds
    with pytest.raises(report.Failed, match=r"(?s)false failed \(exit 1\).*\$ false"):
        report.run_timed(["false"], log, "false")


def test_code_version_names_the_commit(monkeypatch):
    assert report.code_version(("bench",)).startswith(("commit ", "unknown"))
