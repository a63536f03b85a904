# SPDX-License-Identifier: Apache-2.0
"""The PKI state directory of one inventory: layout, locking, loading and committing.

Layout::

    ca/root.crt  ca/root.key      root CA (key encrypted; may be moved offline after creation)
    ca/issuing.crt ca/issuing.key issuing CA (key encrypted), name-constrained
    ca/chain.pem                  issuing + root certificates
    ca/crl.pem                    CRL of the issuing CA
    index.json                    every certificate issued and revoked (the commit point)
    authz.ini                     the supervisor's [Roles] and [Authorizations]
    bundles/<host>-<serial>/      key.pem (0600), cert.pem, chain.pem, ca.pem, cert-mplane.pem
    hosts/<host> -> ../bundles/<host>-<serial>   the host's current bundle

New bundles are written first, then ``index.json`` is replaced in one rename; only then are the
``hosts/`` links moved. Whatever an interruption leaves behind is either the old state or
unreferenced files that the next run removes.
"""

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from pki.ca import IssuingCA
from pki.errors import PKIError
from pki.files import replace_symlink, write_atomic
from pki.index import Index
from pki.keys import PrivateKey, load_encrypted_key

BUNDLE_FILES = ("key.pem", "cert.pem", "chain.pem", "ca.pem", "cert-mplane.pem")


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise PKIError(f"{path} is missing", "restore the state directory from its backup") \
            from None
    except ValueError:
        raise PKIError(f"{path} is not a PEM certificate (damaged or tampered)",
                       "restore it from the state directory's backup") from None


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class PKIState:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.ca_dir = self.path / "ca"
        self.root_cert_path = self.ca_dir / "root.crt"
        self.root_key_path = self.ca_dir / "root.key"
        self.issuing_cert_path = self.ca_dir / "issuing.crt"
        self.issuing_key_path = self.ca_dir / "issuing.key"
        self.chain_path = self.ca_dir / "chain.pem"
        self.crl_path = self.ca_dir / "crl.pem"
        self.index_path = self.path / "index.json"
        self.authz_path = self.path / "authz.ini"
        self.bundles_dir = self.path / "bundles"
        self.hosts_dir = self.path / "hosts"

    def exists(self) -> bool:
        return self.index_path.exists()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        # The lock sits beside the state directory, so a new PKI can be built aside and
        # renamed into place under the same lock.
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.parent / f".{self.path.name}.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PKIError(f"another probeforge-pki run is using {self.path}",
                               "wait for it to finish, then run again") from None
            yield

    # -- reading ---------------------------------------------------------------------------

    def load_index(self) -> Index:
        try:
            raw = self.index_path.read_bytes()
        except FileNotFoundError:
            raise PKIError(f"no PKI in {self.path}",
                           "create it with `probeforge-pki sync` or playbooks/pki.yml") from None
        return Index.from_json(raw, str(self.index_path))

    def ca_certs(self, now: datetime) -> tuple[x509.Certificate, x509.Certificate]:
        """The root and issuing certificates, checked for tampering and expiry."""
        root = load_cert(self.root_cert_path)
        issuing = load_cert(self.issuing_cert_path)
        for cert, signer, path in ((root, root, self.root_cert_path),
                                   (issuing, root, self.issuing_cert_path)):
            try:
                cert.verify_directly_issued_by(signer)
            except (InvalidSignature, ValueError, TypeError):
                raise PKIError(f"{path} fails its signature check (tampered or replaced)",
                               "restore the CA from the state directory's backup") from None
        for cert, path in ((root, self.root_cert_path), (issuing, self.issuing_cert_path)):
            if cert.not_valid_after_utc <= now:
                raise PKIError(
                    f"the CA certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}",
                    "create a new PKI for this inventory (move the state directory away and "
                    "run again), then redeploy every host")
        return root, issuing

    def issuing_ca(self, passphrase: bytes, now: datetime) -> IssuingCA:
        """The issuing CA with its key; the root key is never needed for this."""
        _, cert = self.ca_certs(now)
        key = load_encrypted_key(self.issuing_key_path, passphrase)
        if _public_der(key) != _public_der(cert):
            raise PKIError(f"{self.issuing_key_path} does not belong to {self.issuing_cert_path}",
                           "restore both from the same backup")
        return IssuingCA(cert=cert, key=key)

    def root_key(self, passphrase: bytes) -> PrivateKey:
        return load_encrypted_key(self.root_key_path, passphrase)

    # -- writing ---------------------------------------------------------------------------

    def new_bundle_dir(self, name: str) -> Path:
        tmp = self.bundles_dir / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, mode=0o700)
        return tmp

    def commit_index(self, index: Index) -> None:
        data = index.to_json()
        if self.index_path.exists() and self.index_path.read_bytes() == data:
            return
        write_atomic(self.index_path, data, mode=0o600)

    def link_hosts(self, index: Index) -> None:
        """Point every host at its current bundle and drop what nothing refers to any more."""
        self.hosts_dir.mkdir(exist_ok=True, mode=0o700)
        wanted: dict[str, str] = {}
        for record in index.certificates:
            if record.status == "current":
                wanted[record.host] = record.bundle_name
        for host, bundle in wanted.items():
            link = self.hosts_dir / host
            target = f"../bundles/{bundle}"
            if not (link.is_symlink() and os.readlink(link) == target):
                replace_symlink(link, target)
        for link in self.hosts_dir.iterdir():
            if link.name not in wanted:
                link.unlink()
        if self.bundles_dir.exists():
            keep = set(wanted.values())
            for bundle in self.bundles_dir.iterdir():
                if bundle.name not in keep:
                    # Superseded and revoked keys are a liability, not a record.
                    shutil.rmtree(bundle)


def _public_der(obj: PrivateKey | x509.Certificate) -> bytes:
    public = obj.public_key()
    return public.public_bytes(serialization.Encoding.DER,  # type: ignore[union-attr]
                               serialization.PublicFormat.SubjectPublicKeyInfo)
