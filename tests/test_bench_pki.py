# SPDX-License-Identifier: Apache-2.0
"""bench/pki_issue.py runs end to end and rewrites only its own section of the report."""

import pytest

from bench import pki_issue

ROWS = (
    "| probeforge `pki.sync`, fresh state incl. CA, ECDSA P-256, 50 hosts |",
    "| probeforge `pki.sync`, re-run, nothing to change, 50 hosts |",
    "| probeforge `pki.sync`, fresh state incl. CA, RSA-2048, 50 hosts |",
    "| openssl, one `req -x509 -CA` process per host, sequential, ECDSA P-256, 50 hosts |",
    "| openssl, same, **2 parallel workers**, 50 hosts |",
)


def test_quick_run_writes_its_section(tmp_path):
    report = tmp_path / "b.md"

    assert pki_issue.main(["--quick", "--write", str(report)]) == 0

    text = report.read_text()
    assert text.startswith("# Benchmarks\n")
    assert text.count(pki_issue.START) == 1
    assert text.count(pki_issue.END) == 1
    assert text.index(pki_issue.START) < text.index(pki_issue.END)
    assert "| what | median (s) | min-max (s) | runs | budget | verdict |" in text
    for row in ROWS:
        assert row in text
    assert "**Ratio openssl / probeforge**" in text
    assert "differ" not in text  # the baseline's certificate matches probeforge's


def test_write_section_leaves_other_sections_alone(tmp_path):
    report = tmp_path / "b.md"
    before = "# Benchmarks\n\n<!-- bench:a:start -->\nA\n<!-- bench:a:end -->\n"
    after = "<!-- bench:z:start -->\nZ\n<!-- bench:z:end -->\n"
    report.write_text(before)
    pki_issue.write_section(report, f"{pki_issue.START}\nold\n{pki_issue.END}\n")
    report.write_text(report.read_text() + "\n" + after)

    pki_issue.write_section(report, f"{pki_issue.START}\nnew\n{pki_issue.END}\n")

    text = report.read_text()
    assert text.startswith(before)
    assert text.endswith(after)
    assert "new" in text and "old" not in text
    assert text.count(pki_issue.START) == 1


def test_write_section_refuses_unbalanced_markers(tmp_path):
    report = tmp_path / "b.md"
    report.write_text(f"# Benchmarks\n\n{pki_issue.START}\nno end marker\n")

    with pytest.raises(SystemExit):
        pki_issue.write_section(report, f"{pki_issue.START}\nnew\n{pki_issue.END}\n")
    assert "no end marker" in report.read_text()
