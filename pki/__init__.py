# SPDX-License-Identifier: Apache-2.0
"""The deployment PKI: one root CA, one name-constrained issuing CA, one identity per host.

The public API reads as a short story::

    state = PKIState(path)
    report = sync(state, Deployment.from_request(request), passphrase)
    revoke(state, passphrase, host="probe-01", reason="key-compromise")
"""

from pki.deployment import Deployment, HostRequest
from pki.errors import PKIError
from pki.operations import revoke, sync
from pki.state import PKIState

__all__ = ["Deployment", "HostRequest", "PKIError", "PKIState", "revoke", "sync"]
