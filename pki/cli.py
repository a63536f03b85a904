# SPDX-License-Identifier: Apache-2.0
"""probeforge-pki: the deployment PKI from the command line.

Every failure prints one line, ``probeforge-pki: error: <problem>; <fix>``, and exits 2;
nothing is changed by a failed command.
"""

import argparse
import json
import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path

from pki.ca import REVOCATION_REASONS
from pki.deployment import Deployment
from pki.errors import PKIError
from pki.files import write_atomic
from pki.operations import Report, refresh_crl, revoke, sync
from pki.state import PKIState

PASSPHRASE_ENV = "PROBEFORGE_PKI_PASSPHRASE"


def _passphrase(args: argparse.Namespace, state: PKIState) -> bytes:
    if args.passphrase_file:
        path = Path(args.passphrase_file).expanduser()
        if not path.exists() and getattr(args, "create_passphrase_file", False):
            if state.exists():
                raise PKIError(f"passphrase file {path} is missing but the PKI in {state.path} "
                               "already exists", "restore the passphrase file; a new passphrase "
                               "cannot open the existing CA keys")
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(path, (secrets.token_urlsafe(32) + "\n").encode(), mode=0o600)
        try:
            value = path.read_bytes().strip()
        except FileNotFoundError:
            raise PKIError(f"passphrase file {path} does not exist",
                           "create it (mode 0600) or fix --passphrase-file") from None
    else:
        value = os.environ.get(PASSPHRASE_ENV, "").encode()
    if not value:
        raise PKIError("no CA passphrase given",
                       f"set {PASSPHRASE_ENV} or pass --passphrase-file (the pki role takes "
                       "pki_ca_passphrase, e.g. from ansible-vault)")
    return value


def _read_request(source: str) -> Deployment:
    if source == "-":
        return Deployment.from_json(sys.stdin.read(), "the request on stdin")
    try:
        return Deployment.from_json(Path(source).read_text(), source)
    except FileNotFoundError:
        raise PKIError(f"request file {source} does not exist", "fix --request") from None


def _print_report(report: Report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), sort_keys=True))
        return
    if report.created_ca:
        print("created root and issuing CA")
    for item in report.issued:
        print(f"issued {item['host']}: serial {item['serial']} ({item['reason']})")
    for item in report.revoked:
        print(f"revoked {item['host']}: serial {item['serial']} ({item['reason']})")
    for host in report.blocked:
        print(f"warning: {host} is revoked and was not re-issued (use --reissue {host})")
    for host in report.not_in_inventory:
        print(f"note: {host} has a certificate but is no longer in the inventory "
              f"(revoke it with: probeforge-pki revoke --host {host})")
    if report.crl_signed:
        print("CRL re-signed")
    if report.authz_changed:
        print("supervisor authorizations updated")
    if not report.changed:
        print("nothing to do: every certificate is current")


def _status(state: PKIState, as_json: bool) -> None:
    index = state.load_index()
    rows = index.certificates
    if as_json:
        print(json.dumps([vars(r) for r in rows], sort_keys=True))
        return
    width = max([len("host"), *(len(r.host) for r in rows)])
    print(f"{'host':<{width}} {'status':<10} {'not after':<11} {'serial':<40} identity")
    for r in rows:
        status = r.status if r.status != "revoked" else f"revoked:{r.reason}"
        print(f"{r.host:<{width}} {status:<10} {r.not_after[:10]:<11} {r.serial:<40} {r.identity}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probeforge-pki", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, secret: bool = True) -> None:
        p.add_argument("--state", required=True, help="the inventory's PKI state directory")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if secret:
            p.add_argument("--passphrase-file",
                           help=f"file holding the CA passphrase (default: ${PASSPHRASE_ENV})")

    p = sub.add_parser("sync", help="create the CA if needed; issue and renew host certificates")
    common(p)
    p.add_argument("--request", required=True, help="request JSON from the pki role, or -")
    p.add_argument("--reissue", action="append", default=[], metavar="HOST",
                   help="issue a new certificate for HOST even if revoked or current")
    p.add_argument("--create-passphrase-file", action="store_true",
                   help="generate --passphrase-file if neither it nor the PKI exists yet")
    p = sub.add_parser("revoke", help="revoke a host's certificate or a serial; re-sign the CRL")
    common(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--host")
    what.add_argument("--serial")
    p.add_argument("--reason", default="unspecified", choices=sorted(REVOCATION_REASONS))
    p = sub.add_parser("crl", help="re-sign the CRL if it is past half its life")
    common(p)
    p = sub.add_parser("status", help="list issued and revoked certificates")
    common(p, secret=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    state = PKIState(Path(args.state).expanduser())
    try:
        if args.command == "status":
            _status(state, args.json)
            return 0
        if args.command == "sync":
            deployment = _read_request(args.request)
            report = sync(state, deployment, _passphrase(args, state),
                          reissue=frozenset(args.reissue))
        elif args.command == "revoke":
            report = revoke(state, _passphrase(args, state), host=args.host, serial=args.serial,
                            reason=args.reason)
        else:
            report = refresh_crl(state, _passphrase(args, state), now=datetime.now(UTC))
    except PKIError as exc:
        print(f"probeforge-pki: error: {exc}", file=sys.stderr)
        return 2
    _print_report(report, args.json)
    return 0
