# SPDX-License-Identifier: Apache-2.0
"""bench/appliance.py's pure parts: what it reads from the builder's progress, the comparison
command, and the section it writes, without building or booting anything.

No end-to-end test: the benchmark builds the appliance from an empty cache and then three more
times, and boots it three times, well over half an hour on two cores."""

import argparse
from pathlib import Path

from bench import appliance as bench
from bench import report

BUILDER_OUTPUT = """\
rootfs: mmdebstrap debian bookworm from http://deb.debian.org/debian (73 packages)
rootfs: 218 .debs in the cache
provision: ansible-playbook 4 role steps into /tmp/x/tree
provision:   appliance_base : Ensure Cockpit is socket-activated
provision: done in 52 s, 31 changed
base 3ce9b72f2960332f ready in 231 s
disk: grub images for BIOS and UEFI
images of base 3ce9b72f2960332f in /tmp/x/out (104 s)
"""


def test_parse_build_output_takes_the_builders_own_timings():
    assert bench.parse_build_output(BUILDER_OUTPUT) == (231.0, 104.0, 52.0)
    # A cached base: only the images were made.
    cached = ("base 3ce9b72f2960332f is cached (/c/base/3ce9)\n"
              "images of base 3ce9b72f2960332f in /o (99 s)\n")
    assert bench.parse_build_output(cached) == (None, 99.0, None)
    # A seed's provisioning is not the base's.
    assert bench.parse_build_output("seed appliance-01: done in 20 s, 9 changed\n") == \
        (None, None, None)


def test_debootstrap_command_is_the_plain_tool_with_the_recipes_packages():
    command = bench.debootstrap_command(["systemd-sysv", "cockpit-ws"], "bookworm",
                                        Path("/t/root"), "http://deb.debian.org/debian")
    assert command == ["debootstrap", "--variant=minbase", "--include=systemd-sysv,cockpit-ws",
                       "bookworm", "/t/root", "http://deb.debian.org/debian"]


def test_ratio():
    assert bench.ratio(600.0, 200.0) == "3.00x"
    assert bench.ratio(None, 200.0) == "—" and bench.ratio(600.0, 0.0) == "—"


def _results(**changes) -> bench.Results:
    args = argparse.Namespace(runs=2, boots=2, quick=False, tmpdir=None, keep=False)
    results = bench.Results(
        args, cold=bench.Build(500.0, 300.0, 120.0, 60.0),
        warm=[bench.Build(290.0, 190.0, 100.0, 50.0), bench.Build(310.0, 200.0, 110.0, 55.0)],
        reuse=3.0, seed=40.0,
        sizes={"qcow2": 328 << 20, "vmdk": 316 << 20, "ova": 316 << 20, "tree": 870 << 20,
               "seed": 8 << 20},
        packages=218, kernel="6.1.0-50-amd64", name="probeforge-appliance-x",
        omitted=["tstat"],
        boots=[bench.Boot(40.0, 42.0, 50.0, "tcg"), bench.Boot(44.0, 46.0, None, "tcg")],
        debootstrap=900.0, debootstrap_packages=230, debootstrap_bytes=700 << 20,
        debootstrap_command=["debootstrap", "--variant=minbase", "bookworm", "DIR"],
        loads={"start": (0.5, 0.4, 0.3), "end": (2.0, 1.0, 0.5)},
        phases={"builds": 1500.0, "total": 2400.0}, code="commit abc1234")
    for name, value in changes.items():
        setattr(results, name, value)
    return results


def test_rows_judge_the_warm_build_against_its_budget():
    rows = {row.what: row for row in bench.build_rows(_results())}
    warm = rows["warm: .debs cached, base rebuilt → images"]
    assert warm.median == 300.0 and warm.verdict == "within budget"
    over = bench.build_rows(_results(warm=[bench.Build(400.0, None, None, None)]))
    assert over[1].verdict == "**over budget**"
    assert rows["reuse: nothing changed"].samples == [3.0]


def test_the_kvm_budget_is_not_applied_to_tcg_boots():
    rows = bench.boot_rows(_results())
    assert rows[1].budget is None and "TCG" in rows[1].budget_text
    assert rows[2].samples == [50.0]  # the boot whose probe never registered is left out
    kvm = bench.boot_rows(_results(boots=[bench.Boot(5.0, 12.0, 15.0, "kvm")]))
    assert kvm[1].verdict == "within budget"


def test_section_is_between_its_markers_and_names_the_comparison(tmp_path):
    text = bench.section(_results(), "python bench/appliance.py --write docs/benchmarks.md")
    assert text.startswith(bench.START) and text.rstrip().endswith(bench.END)
    assert "3.00x the time of probeforge's warm build" in " ".join(text.split())
    assert "| OVA | 316.0 MiB |" in text
    assert "Left out of this image: tstat" in " ".join(text.split())
    failed = bench.section(_results(debootstrap=None, debootstrap_error="exit 1"), "x")
    assert "debootstrap failed: exit 1." in failed
    # Written into a file with other sections, those stay.
    doc = tmp_path / "benchmarks.md"
    doc.write_text(report.HEADER + "\n<!-- bench:pki:start -->\nPKI\n<!-- bench:pki:end -->\n")
    report.write_section(doc, text, bench.START, bench.END)
    report.write_section(doc, text, bench.START, bench.END)
    written = doc.read_text()
    assert written.count(bench.START) == 1 and "PKI" in written
