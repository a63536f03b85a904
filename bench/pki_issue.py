# SPDX-License-Identifier: Apache-2.0
"""Benchmark: certificates for N hosts with ``pki.sync`` against one ``openssl`` process per host.

Measures, in one run on this machine:

* probeforge: ``pki.sync`` into a fresh state directory (CA creation, every host's bundle and
  mPlane RI form), ECDSA P-256; the idempotent re-run over the same hosts; RSA-2048 as an extra;
* the easy-rsa style alternative: one ``openssl req -x509 -CA ...`` process per host,
  sequential, and the same loop over a few parallel workers.

Usage::

    .venv/bin/python bench/pki_issue.py                              # print the results
    .venv/bin/python bench/pki_issue.py --write docs/benchmarks.md   # and rewrite its section
    .venv/bin/python bench/pki_issue.py --quick                      # 50 hosts, 1 run each
"""

import argparse
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cryptography
from cryptography import x509
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend

from pki import Deployment, PKIState, sync
from pki.ca import host_subject
from pki.deployment import HostRequest
from pki.state import BUNDLE_FILES

try:
    from bench import report
except ModuleNotFoundError:  # run as a script: bench/ itself is on sys.path, not the repo
    import report  # type: ignore[no-redef]

START = "<!-- bench:pki_issue:start -->"
END = "<!-- bench:pki_issue:end -->"
HEADER = report.HEADER

# DESIGN.md, "Performance budgets": PKI, issue certificates for 1,000 hosts in at most 10 s.
BUDGET_SECONDS = 10.0
BUDGET_HOSTS = 1000

# Only protects throw-away CA keys in temporary directories; pki insists on >= 12 characters.
PASSPHRASE = b"bench-throwaway-passphrase"

# Extensions whose values depend on the key, so only their presence is compared.
_KEY_BOUND = {x509.SubjectKeyIdentifier.oid, x509.AuthorityKeyIdentifier.oid}


@dataclass
class Row:
    what: str
    samples: list[float]
    budget: float | None  # seconds; None for reference rows that no budget applies to

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def verdict(self) -> str:
        if self.budget is None:
            return "reference (no budget)"
        return "within budget" if self.median <= self.budget else "**over budget**"


@dataclass
class Results:
    hosts: int
    rows: list[Row]
    fresh: Row
    sequential: Row | None
    parallel: Row | None
    workers: int
    comparison: list[str]  # differences between the two host-0000 certificates; empty if none
    cpu: tuple[float, float]  # median user and system CPU seconds of probeforge's fresh runs


@dataclass
class ProbeforgeTimes:
    fresh: list[float]
    again: list[float]
    user: list[float]
    system: list[float]
    cert: bytes  # host-0000's certificate, to compare with the baseline's


# -- the request ---------------------------------------------------------------------------

def _address(i: int) -> str:
    # Never .0 or .255, so no address looks like a network or broadcast address.
    return f"10.{i // 62500 % 256}.{i // 250 % 250}.{i % 250 + 1}"


def bench_request(hosts: int, key_type: str = "ecdsa-p256") -> dict[str, Any]:
    """The request the pki role would render for ``hosts`` probes of one deployment."""
    return {
        "deployment": "bench",
        "domains": ["bench.internal"],
        "networks": ["10.0.0.0/8"],
        "key_type": key_type,
        "group_profiles": {"probes": "probe"},
        "inventory_groups": ["probes"],
        "hosts": [{"name": f"host-{i:04d}", "groups": ["probes"], "address": _address(i)}
                  for i in range(hosts)],
    }


# -- probeforge ----------------------------------------------------------------------------

def _settle() -> None:
    # pki.sync ends with os.sync(), which flushes the whole machine's dirty pages, so without
    # this a run would also pay for writing back (and deleting) the previous run's files.
    os.sync()


def _check_bundles(state: PKIState, hosts: int) -> None:
    # A fast run that skipped work would be a wrong result, not a good one.
    names = sorted(p.name for p in state.hosts_dir.iterdir())
    if len(names) != hosts or not all((state.hosts_dir / n / f).is_file()
                                      for n in names for f in BUNDLE_FILES):
        raise RuntimeError(f"probeforge left {len(names)} complete bundles, expected {hosts}")


def _cpu() -> tuple[float, float]:
    # Children too: the RI form comes from an openssl process.
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime


def time_probeforge(request: dict[str, Any], runs: int, tmpdir: str | None,
                    rerun: bool) -> ProbeforgeTimes:
    """Fresh-state and re-run timings, and host-0000's certificate from the last run."""
    times = ProbeforgeTimes([], [], [], [], b"")
    fresh, again = times.fresh, times.again
    hosts = len(request["hosts"])
    for run in range(runs):
        with tempfile.TemporaryDirectory(prefix="pki-bench-", dir=tmpdir) as tmp:
            state = PKIState(Path(tmp) / "pki")
            _settle()
            user, system = _cpu()
            start = time.perf_counter()
            # Parsed inside the timer: the CLI and the pki role parse the request every run.
            report = sync(state, Deployment.from_request(request), PASSPHRASE)
            fresh.append(time.perf_counter() - start)
            user_end, system_end = _cpu()
            times.user.append(user_end - user)
            times.system.append(system_end - system)
            if not report.created_ca or len(report.issued) != hosts:
                raise RuntimeError(f"fresh sync issued {len(report.issued)} of {hosts}")
            _check_bundles(state, hosts)
            if rerun:
                _settle()
                start = time.perf_counter()
                report = sync(state, Deployment.from_request(request), PASSPHRASE)
                again.append(time.perf_counter() - start)
                if report.changed:
                    raise RuntimeError("the re-run changed something; it must be a no-op")
            times.cert = (state.hosts_dir / "host-0000" / "cert.pem").read_bytes()
        _progress(f"probeforge {request['key_type']} run {run + 1}/{runs}: {fresh[-1]:.2f} s"
                  + (f", re-run {again[-1]:.2f} s" if rerun else ""))
    return times


# -- openssl, one process per certificate --------------------------------------------------

# The distro's openssl.cnf has `[req] x509_extensions = v3_ca`, which makes every
# `req -x509` output a CA certificate; an empty config keeps the result independent of it.
_OPENSSL_CNF = "[req]\ndistinguished_name = dn\n[dn]\n"
_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def _subj(name: x509.Name) -> str:
    return "".join(f"/{attr.rfc4514_attribute_name}={attr.value}" for attr in name)


def openssl_ca_command(work: Path, deployment: Deployment) -> list[str]:
    subject = f"/DC={'/DC='.join(deployment.subject_dc)}/OU=Certificate Authority/CN=bench CA"
    return ["openssl", "req", "-config", str(work / "openssl.cnf"), "-x509", *_EC_KEY,
            "-keyout", str(work / "ca.key"), "-out", str(work / "ca.crt"), "-subj", subject,
            "-days", str(deployment.root_validity.days),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"]


def openssl_host_command(work: Path, deployment: Deployment, host: HostRequest) -> list[str]:
    """What an easy-rsa style script runs for one host, giving the same certificate content."""
    sans = [f"DNS:{d}" for d in host.dns_names] + [f"IP:{ip}" for ip in host.ip_addresses]
    usages = ["serverAuth", "clientAuth"] if host.profile.server_auth else ["clientAuth"]
    return ["openssl", "req", "-config", str(work / "openssl.cnf"), "-x509",
            "-CA", str(work / "ca.crt"), "-CAkey", str(work / "ca.key"), *_EC_KEY,
            "-keyout", str(work / "private" / f"{host.name}.key"),
            "-out", str(work / "issued" / f"{host.name}.crt"),
            "-subj", _subj(host_subject(deployment, host)),
            "-days", str(deployment.cert_validity.days),
            "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "keyUsage=critical,digitalSignature",
            "-addext", f"extendedKeyUsage={','.join(usages)}",
            "-addext", f"subjectAltName={','.join(sans)}"]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command[:3])} ... failed: "
                           f"{done.stderr.decode(errors='replace').strip()}")


def time_openssl(request: dict[str, Any], runs: int, workers: int,
                 tmpdir: str | None) -> tuple[list[float], bytes]:
    """Timings of the openssl loop over ``workers`` processes at a time, and host-0000's cert."""
    deployment = Deployment.from_request(request)
    samples: list[float] = []
    cert = b""
    for run in range(runs):
        with tempfile.TemporaryDirectory(prefix="openssl-bench-", dir=tmpdir) as tmp:
            work = Path(tmp)
            (work / "openssl.cnf").write_text(_OPENSSL_CNF)
            (work / "private").mkdir()
            (work / "issued").mkdir()
            commands = [openssl_host_command(work, deployment, h) for h in deployment.hosts]
            _settle()
            start = time.perf_counter()
            # The CA is inside the timer, as probeforge's fresh run creates its CA too.
            _run(openssl_ca_command(work, deployment))
            if workers == 1:
                for command in commands:
                    _run(command)
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    list(pool.map(_run, commands))
            samples.append(time.perf_counter() - start)
            issued = len(list((work / "issued").iterdir()))
            if issued != len(deployment.hosts):
                raise RuntimeError(f"openssl wrote {issued} of {len(deployment.hosts)} certs")
            cert = (work / "issued" / "host-0000.crt").read_bytes()
            ca = x509.load_pem_x509_certificate((work / "ca.crt").read_bytes())
            x509.load_pem_x509_certificate(cert).verify_directly_issued_by(ca)
        _progress(f"openssl x{workers} run {run + 1}/{runs}: {samples[-1]:.2f} s")
    return samples, cert


def compare_certs(ours: bytes, theirs: bytes) -> list[str]:
    """How openssl's host certificate differs from probeforge's, other than in keys and dates."""
    a = x509.load_pem_x509_certificate(ours)
    b = x509.load_pem_x509_certificate(theirs)
    diffs = []
    if a.subject != b.subject:
        diffs.append(f"subject {a.subject.rfc4514_string()} vs {b.subject.rfc4514_string()}")
    key_a, key_b = a.public_key(), b.public_key()
    curve_a, curve_b = getattr(key_a, "curve", None), getattr(key_b, "curve", None)
    if type(key_a) is not type(key_b) or getattr(curve_a, "name", None) != getattr(
            curve_b, "name", None):
        diffs.append("key type")
    if a.signature_algorithm_oid != b.signature_algorithm_oid:
        diffs.append("signature algorithm")
    ext_a = {e.oid: e for e in a.extensions}
    ext_b = {e.oid: e for e in b.extensions}
    for oid in sorted(ext_a.keys() ^ ext_b.keys(), key=lambda o: o.dotted_string):
        diffs.append(f"extension {getattr(oid, '_name', oid.dotted_string)} only in "
                     f"{'probeforge' if oid in ext_a else 'openssl'}")
    for oid in sorted(ext_a.keys() & ext_b.keys(), key=lambda o: o.dotted_string):
        ea, eb = ext_a[oid], ext_b[oid]
        if ea.critical != eb.critical or (oid not in _KEY_BOUND and ea.value != eb.value):
            diffs.append(f"extension {getattr(oid, '_name', oid.dotted_string)}")
    return diffs


# -- the machine ---------------------------------------------------------------------------

def machine(tmpdir: str | None) -> list[tuple[str, str]]:
    try:
        cli = subprocess.run(["openssl", "version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        cli = "not found"
    temp = tmpdir or tempfile.gettempdir()
    return [
        *report.machine(),
        ("OpenSSL command line", f"{cli}; runs the openssl baseline and probeforge's RI form"),
        ("cryptography", f"{cryptography.__version__}, with its own "
                         f"{openssl_backend.openssl_version_text()}; makes probeforge's keys "
                         "and signatures"),
        ("temp dirs", f"{temp} ({report.filesystem(temp)})"),
    ]


# -- the report ----------------------------------------------------------------------------

def _budget_text(budget: float | None, hosts: int) -> str:
    if budget is None:
        return "—"
    if hosts == BUDGET_HOSTS:
        return f"≤ {budget:g} s"
    return f"≤ {budget:.3g} s ({BUDGET_SECONDS:g} s per {BUDGET_HOSTS} hosts, scaled)"


def table(results: Results) -> str:
    lines = ["| what | median (s) | min-max (s) | runs | budget | verdict |",
             "|---|---:|---:|---:|---|---|"]
    for row in results.rows:
        lines.append(f"| {row.what} | {row.median:.2f} | {min(row.samples):.2f}-"
                     f"{max(row.samples):.2f} | {len(row.samples)} | "
                     f"{_budget_text(row.budget, results.hosts)} | {row.verdict} |")
    return "\n".join(lines)


def ratios(results: Results) -> str:
    if results.sequential is None:
        return "No openssl baseline was run, so there is no ratio."
    base = results.fresh.median
    per_host = 1000 * results.sequential.median / results.hosts
    text = (f"**Ratio openssl / probeforge** (fresh issue, ECDSA P-256, {results.hosts} hosts): "
            f"**{results.sequential.median / base:.1f}x** for the sequential one-process-per-host "
            f"loop ({per_host:.1f} ms per host against "
            f"{1000 * base / results.hosts:.1f} ms per host)")
    if results.parallel is not None:
        ratio = results.parallel.median / base
        text += (f"; {ratio:.1f}x with {results.workers} parallel openssl workers"
                 + (" (that is, the parallel loop is faster)" if ratio < 1 else ""))
    return text + "."


def notes(results: Results) -> str:
    user, system = results.cpu
    # Wall time alone hides whether the budget is spent on cryptography or on the filesystem,
    # and only the latter changes with the disk under the state directory.
    text = (f"\n\nCPU time of probeforge's fresh ECDSA run (median, this process and its "
            f"openssl child): {user:.2f} s user, {system:.2f} s system. The system time is "
            "mostly creating the bundles' files, directories and links, so it depends on the "
            "filesystem under the state directory.")
    rsa = next((r for r in results.rows if "RSA" in r.what), None)
    if rsa is not None:
        # DESIGN.md's budget names no key type, so an RSA row over it needs its reason beside it.
        text += (f"\n\nRSA-2048 costs {1000 * rsa.median / results.hosts:.0f} ms per host, "
                 "most of it generating the key (a search for random primes); the budget in "
                 "DESIGN.md names no key type and ECDSA P-256 is the default.")
    return text


def section(results: Results, command: str, tmpdir: str | None) -> str:
    n = results.hosts
    last = f"host-{n - 1:04d}"
    machine_lines = "\n".join(f"- {k}: {v}" for k, v in machine(tmpdir))
    if results.comparison:
        checked = ("host-0000's certificates from the two **differ** in: "
                   + "; ".join(results.comparison) + ".")
    elif results.sequential is not None:
        checked = ("Checked on host-0000: the two certificates have the same subject, key "
                   "type, signature algorithm and extensions (basic constraints, key usage, "
                   "extended key usage and subject alternative names equal, key identifiers "
                   "present in both).")
    else:
        checked = ""
    workers = f" and over {results.workers} parallel workers" if results.parallel else ""
    return f"""{START}
## PKI: certificates for {n} hosts (`bench/pki_issue.py`)

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}`.

Machine:

{machine_lines}

Method. One request: deployment `bench`, domain `bench.internal`, network `10.0.0.0/8`,
hosts host-0000 … {last} in group `probes` (profile `probe`), each with one address in
10.0.0.0/8, so each certificate has `CN=host-NNNN`, a DNS and an IP subject alternative name.
Times are wall clock around the whole operation; the table gives the median of the runs and
their spread. `os.sync()` runs before each timed run, so no run pays for writing back another's
files; each run uses a fresh temporary directory that is deleted afterwards. The rows run one
after another in one process; file creation, and so probeforge's fresh runs, can slow down
after earlier runs' thousands of files are deleted, which widens the spread.

- *probeforge, fresh*: `Deployment.from_request` and `pki.sync` into an empty state
  directory: creates the root and issuing CA (keys encrypted), then per host a key,
  certificate, chain, CA certificate and mPlane RI form (one `openssl storeutl` for the whole
  batch), then the index, CRL and authz file, and `os.sync()` for durability.
- *probeforge, re-run*: a second `pki.sync` of the same request over that state; it must
  change nothing (checked).
- *probeforge, RSA-2048*: the fresh run with `key_type: rsa-2048`.
- *openssl*: what an easy-rsa style script does: one self-signed ECDSA P-256 CA
  (`openssl req -x509`), then one `openssl` process per host, started from Python,
  sequential{workers}, with the same subjects and subject alternative names:
  `openssl req -config EMPTY -x509 -CA ca.crt -CAkey ca.key -newkey ec
  -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout K -out C
  -subj /DC=org/DC=mplane/OU=Probes/CN=host-NNNN -days 90
  -addext basicConstraints=critical,CA:FALSE -addext keyUsage=critical,digitalSignature
  -addext extendedKeyUsage=serverAuth,clientAuth -addext subjectAltName=DNS:…,IP:…`.
  It writes only a key and a certificate per host: no chain or CA copies, RI form, index, CRL
  or sync, and its CA is a single level, so it does less than probeforge. easy-rsa itself runs
  at least two openssl processes per host (`gen-req`, `sign-req`) plus its bookkeeping, so
  this loop is a lower bound for it.
- *the openssl flags*: without `-config EMPTY`, `basicConstraints` and `keyUsage`, OpenSSL 3.0
  applies the distribution's `openssl.cnf` (`x509_extensions = v3_ca`) and every host
  certificate comes out as a CA (`CA:TRUE`). {checked}

{table(results)}

{ratios(results)}{notes(results)}
{END}
"""


def write_section(path: Path, text: str) -> None:
    """Replace this benchmark's section of ``path``, leaving every other section alone."""
    report.write_section(path, text, START, END)


# -- driver --------------------------------------------------------------------------------

def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/pki_issue.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=BUDGET_HOSTS, help="hosts (default 1000)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each probeforge row")
    parser.add_argument("--rsa-runs", type=int, help="runs of the RSA-2048 row (default --runs; "
                        "0 skips it)")
    parser.add_argument("--openssl-runs", type=int, default=3,
                        help="runs of each openssl row (0 skips the baseline)")
    parser.add_argument("--workers", type=int, default=2,
                        help="parallel openssl workers for the extra row (0 or 1 skips it)")
    parser.add_argument("--tmpdir", help="where the temporary directories go (default: $TMPDIR)")
    parser.add_argument("--quick", action="store_true",
                        help="50 hosts, one run of each row: checks the script, measures little")
    parser.add_argument("--write", type=Path, metavar="MD",
                        help="rewrite this benchmark's section of MD (created if missing)")
    return parser


def run(args: argparse.Namespace) -> Results:
    hosts = args.hosts
    budget = BUDGET_SECONDS * hosts / BUDGET_HOSTS
    request = bench_request(hosts)
    ecdsa = time_probeforge(request, args.runs, args.tmpdir, rerun=True)
    fresh, again = ecdsa.fresh, ecdsa.again
    rows = [Row(f"probeforge `pki.sync`, fresh state incl. CA, ECDSA P-256, {hosts} hosts",
                fresh, budget),
            Row(f"probeforge `pki.sync`, re-run, nothing to change, {hosts} hosts", again,
                budget)]
    fresh_row = rows[0]
    if args.rsa_runs:
        rsa = time_probeforge(bench_request(hosts, "rsa-2048"), args.rsa_runs, args.tmpdir,
                              rerun=False)
        rows.append(Row(f"probeforge `pki.sync`, fresh state incl. CA, RSA-2048, {hosts} hosts",
                        rsa.fresh, budget))
    sequential = parallel = None
    comparison: list[str] = []
    if args.openssl_runs:
        samples, ossl_cert = time_openssl(request, args.openssl_runs, 1, args.tmpdir)
        sequential = Row(f"openssl, one `req -x509 -CA` process per host, sequential, "
                         f"ECDSA P-256, {hosts} hosts", samples, None)
        rows.append(sequential)
        comparison = compare_certs(ecdsa.cert, ossl_cert)
        if args.workers > 1:
            samples, _ = time_openssl(request, args.openssl_runs, args.workers, args.tmpdir)
            parallel = Row(f"openssl, same, **{args.workers} parallel workers**, {hosts} hosts",
                           samples, None)
            rows.append(parallel)
    cpu = statistics.median(ecdsa.user), statistics.median(ecdsa.system)
    return Results(hosts, rows, fresh_row, sequential, parallel, args.workers, comparison, cpu)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.hosts, args.runs, args.openssl_runs = 50, 1, 1
        args.rsa_runs = 1
    if args.rsa_runs is None:
        args.rsa_runs = args.runs
    if args.hosts < 1 or args.runs < 1 or args.rsa_runs < 0 or args.openssl_runs < 0:
        raise SystemExit("--hosts and --runs must be at least 1, the other counts at least 0")
    if args.openssl_runs and shutil.which("openssl") is None:
        raise SystemExit("openssl is not installed (run make setup)")
    results = run(args)
    shown = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join([".venv/bin/python", "bench/pki_issue.py", *shown])
    text = section(results, command, args.tmpdir)
    if args.write:
        write_section(args.write, text)
        _progress(f"wrote the pki_issue section of {args.write}")
    print(table(results))
    print()
    print(ratios(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
