# SPDX-License-Identifier: Apache-2.0
"""bench/firmware.py's pure parts: what it reads from the guest and the builder's wrapper, the
figures it derives, and the section it writes, without building or booting anything.

No end-to-end test: even with the smallest settings the benchmark builds a base from an empty
cache twice and boots the emulated board, several minutes, more than a slow test may take."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from bench import firmware as bench

STATUS = """\
Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t   30000 kB
VmHWM:\t   14336 kB
VmRSS:\t   13312 kB
RssAnon:\t    5120 kB
RssFile:\t    8192 kB
RssShmem:\t       0 kB
Threads:\t3
"""
# A command name with a space and a parenthesis: fields are counted after the last ")".
STAT = ("217 (probe (daemon) S 1 217 217 0 -1 4194560 2000 0 0 0 "
        "{utime} {stime} 0 0 20 0 3 0 {start} 30000000 3328 4294967295\n")


def guest_output(utime: int, stime: int, start: int = 1500, uptime: float = 100.0) -> str:
    return (f"{STATUS}@@stat\n{STAT.format(utime=utime, stime=stime, start=start)}"
            f"@@uptime\n{uptime:.2f} 90.00\n")


def test_parse_sample_reads_status_stat_and_uptime():
    sample = bench.parse_sample(guest_output(120, 30))

    assert sample == bench.GuestSample(rss_kb=13312, hwm_kb=14336, threads=3, cpu_ticks=150,
                                       start_ticks=1500, uptime=100.0, anon_kb=5120,
                                       file_kb=8192)


def test_parse_sample_refuses_partial_output():
    with pytest.raises(RuntimeError, match="no memory or CPU figures"):
        bench.parse_sample("VmRSS:\t 1 kB\n@@stat\n")


def test_idle_percent_uses_the_guests_clock_and_ticks():
    before = bench.parse_sample(guest_output(100, 20, uptime=100.0))
    after = bench.parse_sample(guest_output(102, 21, uptime=130.0))

    # 3 ticks of 10 ms over 30 s of the guest's uptime: 0.1 % of a core.
    assert bench.idle_percent(before, after) == pytest.approx(0.1)
    restarted = bench.parse_sample(guest_output(1, 1, start=9000, uptime=130.0))
    with pytest.raises(RuntimeError, match="restarted"):
        bench.idle_percent(before, restarted)


def test_find_daemon_by_command_line_not_by_name():
    listing = ("1\tinit \n"
               "190\t/usr/sbin/dropbear -s -p 22 \n"
               "205\tgrep probe-daemon \n"  # names it, but is no python running it
               "217\t/usr/bin/python3 /usr/bin/probe-daemon --config /etc/mplane/probe.conf "
               "--log-target syslog \n"
               "230\t/usr/bin/python3 -c print(1) \n"
               "231\t\n")

    assert bench.find_daemon(listing) == 217
    with pytest.raises(RuntimeError, match="expected one probe daemon"):
        bench.find_daemon("1\tinit \n")


def test_sample_command_reads_the_pid_it_is_given():
    command = bench.sample_command(217)
    assert "/proc/217/status" in command and "/proc/217/stat " in command
    assert "/proc/uptime" in command


def test_union_counts_overlapping_builders_once():
    assert bench.union_seconds([]) == 0
    assert bench.union_seconds([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == pytest.approx(4)
    assert bench.union_seconds([(4, 5), (0, 1)]) == pytest.approx(2)


def test_parse_calls_of_the_wrapper_log():
    text = ("1700000000.25 1700000003.75 -m firmware base --recipe R --board B --cache C --json\n"
            "1700000004.00 1700000005.50 -m firmware image --recipe R --board B --cache C "
            "--host probe-02 --overlay O --out D --json\n")

    base, image = bench.parse_calls(text)

    assert (base.command, base.host, base.seconds) == ("base", None, 3.5)
    assert (image.command, image.host, image.seconds) == ("image", "probe-02", 1.5)


def test_first_seen_takes_the_first_line_of_each_milestone():
    lines = [(1.0, "[rig] boot 1: slot a"), (3.0, "[    0.000000] Linux version 6.1.0"),
             (9.0, "[    2.1] Run /init as init process"),
             (20.0, "dropbear: listening on port 22"), (21.0, "dropbear: listening on port 22"),
             (25.0, "probe-daemon: started (pid 225)")]

    seen = bench.first_seen(lines)

    assert seen == {"kernel console up": 3.0, "initramfs runs /init": 9.0,
                    "dropbear listening": 20.0, "probe daemon started": 25.0}


def test_console_watcher_keeps_partial_lines_for_later(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("Linux version 6.1\nRun /in")
    watcher = bench.ConsoleWatcher(log)
    watcher.scan()
    assert [line for _, line in watcher.lines] == ["Linux version 6.1"]
    with log.open("a") as handle:
        handle.write("it as init process\n")
    watcher.scan()
    assert [line for _, line in watcher.lines][-1] == "Run /init as init process"


def test_mmdebstrap_command_names_the_packages_and_leaves_binfmt_alone():
    command = bench.mmdebstrap_command(["busybox-static", "linux-image-4kc-malta"], "bookworm",
                                       Path("/tmp/x/root"), "http://deb.debian.org/debian")

    assert command[0] == "mmdebstrap"
    assert "--arch=mipsel" in command
    assert "--include=busybox-static,linux-image-4kc-malta" in command
    assert command[-3:] == ["bookworm", "/tmp/x/root", "http://deb.debian.org/debian"]


def test_row_verdicts_and_cells():
    warm = bench.Row("warm", [50.0, 70.0, 55.0], budget=60.0, budget_text="≤ 60 s")
    over = bench.Row("warm", [61.0], budget=60.0, budget_text="≤ 60 s")
    idle = bench.Row("idle", [0.05], "%", 0.1, "≈ 0 % CPU idle")
    rss = bench.Row("rss", [20480], "MiB", 16 * 1024, "≤ 16 MB RSS")

    assert warm.cells() == ["warm", "55.00", "50.00-70.00", "3", "≤ 60 s", "within budget"]
    assert over.verdict == "**over budget**"
    assert idle.verdict == "≈ 0"
    assert rss.cells()[1:3] == ["20.0", "—"] and rss.verdict == "**over budget**"
    assert bench.Row("nothing", []).cells()[-1] == "not measured"
    assert bench.Row("ref", [1.0]).verdict == "reference (no budget)"


def _sample(rss: int, cpu: int, uptime: float) -> bench.GuestSample:
    return bench.GuestSample(rss, rss + 512, 3, cpu, 1500, uptime)


def results() -> bench.Results:
    """Figures of a made-up run, shaped as a real one."""
    args = argparse.Namespace(runs=2, hosts=3, specs=2, idle=30.0, tmpdir=None,
                              compare_mmdebstrap=True, mmdebstrap_runs=1)
    calls = [bench.Call(0.0, 1.0, ("-m", "firmware", "base")),
             bench.Call(2.0, 4.0, ("-m", "firmware", "image", "--host", "probe-01")),
             bench.Call(3.0, 5.0, ("-m", "firmware", "image", "--host", "probe-02")),
             bench.Call(3.0, 5.5, ("-m", "firmware", "image", "--host", "probe-03"))]
    r = bench.Results(args)
    r.hosts = ["probe-01", "probe-02", "probe-03"]
    r.setup_seconds = 90.0
    r.cold = [bench.Build(40.0, 1.5, True, True), bench.Build(44.0, 1.6, True, True)]
    r.warm = [bench.Build(30.0, 1.4, True, True), bench.Build(31.0, 1.2, True, True)]
    r.reuse = [bench.Build(0.9, 1.1, False, False)] * 2
    r.sequential = [1.1, 1.2, 1.3, 1.0, 1.1, 1.2]
    r.one = [bench.PlaybookRun(1, 20.0, 3.0, calls[:2], {"firmware : Render": 2.0,
                                                          "pki : Sync": 1.5})] * 2
    r.every = [bench.PlaybookRun(3, 26.0, 4.5, calls, {"firmware : Render": 5.0,
                                                        "pki : Sync": 1.5})] * 2
    r.parts = [("kernel", 6_000_000), ("initramfs", 7_000_000), ("rootfs", 15_000_000),
               ("host", 8192)]
    r.image_bytes = 28_040_000
    r.image_name = "probeforge-2026.11.0-qemu-malta-mipsel-probe-01-sysupgrade.bin"
    r.base_tree_bytes = 60 * 2**20
    r.packages, r.kernel, r.omitted = 39, "6.1.0-50-4kc-malta", ["tstat"]
    r.boots = [bench.BootRun(20.0, 35.0, 2.0, {"kernel console up": 2.0}),
               bench.BootRun(22.0, 37.0, 2.2, {"kernel console up": 2.1})]
    r.memory = bench.Memory(_sample(13000, 3000, 100.0),
                            (_sample(13000, 3000, 100.0), _sample(13000, 3003, 130.0)),
                            _sample(13500, 3100, 200.0),
                            (_sample(13500, 3100, 200.0), _sample(13500, 3160, 230.0)),
                            [11.0, 12.0], 217, 15.0)
    r.mmdebstrap = bench.Mmdebstrap([270.0], ["mmdebstrap", "--arch=mipsel", "DIR"], 90,
                                    200 * 2**20, "mmdebstrap 1.3.5")
    r.loads = {"start": (0.5, 0.4, 0.3), "end": (1.0, 0.9, 0.8)}
    r.phases = {"builds": 600.0, "boots": 300.0, "total": 1200.0}
    r.versions = [("QEMU", "QEMU emulator version 7.2")]
    r.code = "commit abc1234"
    return r


def test_derived_figures():
    r = results()

    assert r.per_extra_host == [3.0, 3.0]  # (26 - 20) / (3 - 1)
    assert r.builder_per_extra_host == [0.75, 0.75]
    assert r.every[0].image_calls == [2.0, 2.0, 2.5]
    assert r.memory is not None and r.memory.idle_percent == pytest.approx(0.1)
    assert r.memory.idle_later_percent == pytest.approx(2.0)
    assert (r.memory.startup_cpu, r.memory.age) == (30.0, 85.0)
    assert bench.task_growth(r.one, r.every) == [("firmware : Render", 5.0, 1.5),
                                                 ("pki : Sync", 1.5, 0.0)]


def test_parse_task_profile_reads_the_recap_only():
    text = """\
TASK [firmware : Render] ****************************** 0:00:01.000 ---- 4.78s
PLAY RECAP ****
probe-01 : ok=15 changed=10
TASKS RECAP ********************************************************************
Sunday 22 November 2026  05:00:07 +0000 (0:00:00.119)       0:00:20.013 *******
===============================================================================
firmware : Ensure the overlay's files are rendered from the templates --- 4.78s
probe_daemon : Ensure the overlay's probe.conf matches the inventory ---- 1.39s
Render the host's probe daemon configuration and credentials into its overlay --- 0.05s
"""
    assert bench.parse_task_profile(text) == {
        "firmware : Ensure the overlay's files are rendered from the templates": 4.78,
        "probe_daemon : Ensure the overlay's probe.conf matches the inventory": 1.39,
        "Render the host's probe daemon configuration and credentials into its overlay": 0.05}
    assert bench.parse_task_profile("no recap") == {}


def test_section_has_every_table_budget_and_ratio():
    text = bench.section(results(), ".venv/bin/python bench/firmware.py --runs 2")

    assert text.startswith(bench.START + "\n## MiniProbe firmware")
    assert text.endswith(bench.END + "\n")
    assert "`.venv/bin/python bench/firmware.py --runs 2`" in text
    lines = text.splitlines()

    def row(start: str) -> str:
        found = [line for line in lines if line.startswith(start)]
        assert len(found) == 1, (start, found)
        return found[0]

    assert row("| warm build: ").endswith("| 31.80 | 31.40-32.20 | 2 | ≤ 60 s | within budget |")
    assert "| ≤ 2 s | within budget |" in row("| extra host, builder alone: ")
    assert "| 3.00 | 3.00-3.00 | 2 | ≤ 2 s | **over budget** |" in row("| extra host, whole ")
    assert "| ≤ 60 s | within budget |" in row("| power-on → registered")
    assert row("| power-on → SSH").startswith("| power-on → SSH runs a command | 21.00 |")
    assert "| 12.7 | — | 1 | ≤ 16 MB RSS | within budget |" in row("| VmRSS after registration")
    assert "| 0.100 |" in row("| idle CPU over 30 s right after registration")
    assert "| 2.000 |" in row("| idle CPU over 30 s after the 2 ping")
    prose = " ".join(text.split())  # paragraphs are re-wrapped
    assert "`firmware : Render` 5.0 s (+1.50 s a host)" in prose
    assert "run for 85 s and used 30.0 s of CPU" in prose
    assert "6 polls in a window, 0.10 s of CPU per poll" in prose
    assert row("| host | 8,192 |")
    assert row("| whole file")
    assert "**6.4x**" in text  # mmdebstrap 270 s against the cold base's median 42 s
    assert "load average (1 / 5 / 15 min): 0.50 / 0.40 / 0.30 at the start" in text
    assert "20.0 min in all" in text
    assert "tstat" in text


def test_section_without_optional_parts():
    r = results()
    r.memory, r.mmdebstrap, r.boots, r.cold = None, None, [], []

    text = bench.section(r, "cmd")

    assert "`--compare-mmdebstrap` adds it" in text
    assert row_verdict(text, "| power-on → registered") == "not measured"


def row_verdict(text: str, start: str) -> str:
    line = next(line for line in text.splitlines() if line.startswith(start))
    return line.rstrip(" |").rsplit("| ", 1)[1]


def test_write_section_keeps_the_other_sections(tmp_path):
    report = tmp_path / "b.md"
    other = "# Benchmarks\n\n<!-- bench:other:start -->\nOTHER\n<!-- bench:other:end -->\n"
    report.write_text(other)

    bench.write_section(report, f"{bench.START}\nOLD SECTION\n{bench.END}\n")
    bench.write_section(report, bench.section(results(), "cmd"))

    text = report.read_text()
    assert text.startswith(other)
    assert text.count(bench.START) == 1 and text.count(bench.END) == 1
    assert "OLD SECTION" not in text


def test_write_section_refuses_unbalanced_markers(tmp_path):
    report = tmp_path / "b.md"
    report.write_text(f"# Benchmarks\n\n{bench.START}\nno end marker\n")

    with pytest.raises(SystemExit):
        bench.write_section(report, f"{bench.START}\nnew\n{bench.END}\n")
    assert "no end marker" in report.read_text()


def test_make_inventory_adds_probes_with_their_own_ports(tmp_path):
    yaml = pytest.importorskip("yaml")
    cache, wrapper = tmp_path / "cache", tmp_path / "python.sh"

    inventory, names = bench.make_inventory(tmp_path, 4, cache, wrapper)

    assert names == ["probe-01", "probe-02", "probe-03", "probe-04"]
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    probes = hosts["all"]["children"]["probes"]["children"]["miniprobes"]["hosts"]
    assert [probes[n]["rig_guest_address"] for n in names] == [
        "10.0.2.21", "10.0.2.22", "10.0.2.23", "10.0.2.24"]
    ports = set()
    for name in names:
        variables = yaml.safe_load((inventory / "host_vars" / f"{name}.yml").read_text())
        assert variables["firmware_cache_dir"] == str(cache)
        assert variables["firmware_python"] == str(wrapper)
        assert variables["firmware_output_dir"] == str(tmp_path / "build")
        ports |= {variables["ansible_port"], variables["rig_console_port"]}
    assert len(ports) == 8


def test_cli_refuses_bad_settings():
    with pytest.raises(SystemExit):
        bench.main(["--hosts", "1"])
    with pytest.raises(SystemExit):
        bench.main(["--runs", "0"])


def test_module_runs_as_a_script_without_shadowing_the_firmware_package():
    done = subprocess.run([sys.executable, str(bench.REPO / "bench" / "firmware.py"), "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "--compare-mmdebstrap" in done.stdout
