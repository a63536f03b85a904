# SPDX-License-Identifier: Apache-2.0
"""Certificates in the form the mPlane reference implementation reads.

The RI takes its own identity from a ``Subject:`` line in its certificate file, so the file holds
OpenSSL's text dump followed by the PEM block. One ``openssl storeutl`` process dumps a whole
batch: spawning ``openssl x509 -text`` per host costs ~35 ms each, which alone would blow the
budget of 1,000 hosts in 10 s.
"""

import re
import subprocess
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.errors import PKIError

_HEADER = re.compile(rb"^\d+: Certificate\n", re.MULTILINE)


def mplane_forms(certs: list[x509.Certificate]) -> list[bytes]:
    """Return, for each certificate, its text dump followed by its PEM block."""
    if not certs:
        return []
    pems = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    with tempfile.NamedTemporaryFile(suffix=".pem") as batch:
        batch.write(pems)
        batch.flush()
        try:
            out = subprocess.run(
                ["openssl", "storeutl", "-text", "-certs", batch.name],
                check=True, capture_output=True,
            ).stdout
        except FileNotFoundError:
            raise PKIError("openssl is not installed", "run the set-up command (make setup)") \
                from None
        except subprocess.CalledProcessError as exc:
            raise PKIError(f"openssl storeutl failed: {exc.stderr.decode().strip()}",
                           "check the openssl installation") from None
    parts = _HEADER.split(out)[1:]
    # storeutl ends with a "Total found: N" line after the last object.
    parts[-1] = parts[-1].rsplit(b"Total found:", 1)[0]
    if len(parts) != len(certs):
        raise PKIError(f"openssl dumped {len(parts)} certificates instead of {len(certs)}",
                       "check the openssl installation")
    return parts
