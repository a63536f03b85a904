# SPDX-License-Identifier: Apache-2.0
"""probeforge compatibility shim: unmodified mplane-sdk 0.9.0 on Python 3.11 and 3.12.

Imported at interpreter start-up by ``probeforge_mplane_shim.pth`` in the venv's
site-packages: a .pth file rather than ``sitecustomize``, because a distribution's own
sitecustomize (Debian and Ubuntu ship one) comes earlier on ``sys.path`` and would win. No
installed file of the SDK is changed. This is the one copy: the ``supervisor`` role installs
it on appliances, and the rig and the tests (``rig/mplane_ri.py``) into its RI venv.

What it does:

1. ``html.parser.HTMLParser(strict=...)``: ``mplane.client`` builds ``CrawlParser(strict=False)``
   to read a supervisor's capability index; the argument was removed in Python 3.5.
2. ``ssl.wrap_socket``: ``mplane.tls`` calls it to learn a peer's identity; Python 3.12 removed
   it. Where it is missing it is provided again, built on ``SSLContext`` with the old
   semantics: the peer's chain is verified exactly as ``cert_reqs``/``ca_certs`` ask (the RI
   asks ``CERT_REQUIRED`` with its CA chain), host names are not checked (the old function
   had no ``server_hostname``).
3. More than one ``registry_preload``: the RI preloads one registry file per program (the
   ``registry_preload`` key of its ``[component]`` or ``[client]`` section). A value of
   several lines now preloads each line's file in order; a one-line value behaves as before.
4. A specification goes to the component whose capability it was made from. The RI lost
   that twice when two probes offer the same measurement: it matched a client's
   specification to a capability by schema (parameter and result names) alone, so the first
   probe registered took all; and the supervisor relayed it by label, which names the last
   probe registered. Now the metadata a specification carries over from its capability must
   agree too (probeforge probes name themselves in ``source.device``), and each relay
   forwards to its own capability by token.

``after_import(module, patch)`` runs ``patch(module)`` right after a module is first imported:
for patches that must not import the SDK at start-up of every interpreter of the venv.
"""

from __future__ import annotations

import html.parser
import importlib.abc
import socket
import ssl
import sys
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from types import ModuleType

# --- 1. HTMLParser(strict=) ------------------------------------------------------------------

_html_parser_init = html.parser.HTMLParser.__init__


def _html_parser_init_without_strict(self: html.parser.HTMLParser, *args: object,
                                     strict: object = None, **kwargs: object) -> None:
    _html_parser_init(self, *args, **kwargs)


html.parser.HTMLParser.__init__ = _html_parser_init_without_strict


# --- 2. ssl.wrap_socket ----------------------------------------------------------------------


def wrap_socket(sock: socket.socket, keyfile: str | None = None, certfile: str | None = None,
                server_side: bool = False, cert_reqs: ssl.VerifyMode = ssl.CERT_NONE,
                ssl_version: int | None = None, ca_certs: str | None = None,
                do_handshake_on_connect: bool = True, suppress_ragged_eofs: bool = True,
                ciphers: str | None = None) -> ssl.SSLSocket:
    """``ssl.wrap_socket`` as Python 3.11 had it, without the deprecated protocol constant."""
    if server_side and not certfile:
        raise ValueError("certfile must be specified for server-side operations")
    if keyfile and not certfile:
        raise ValueError("certfile must be specified")
    if ssl_version is None or ssl_version == getattr(ssl, "PROTOCOL_TLS", None):
        ssl_version = ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT
    context = ssl.SSLContext(ssl_version)
    # Before verify_mode: CERT_NONE is refused while host names are checked.
    context.check_hostname = False
    context.verify_mode = cert_reqs
    if ca_certs:
        context.load_verify_locations(ca_certs)
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    if ciphers:
        context.set_ciphers(ciphers)
    return context.wrap_socket(sock=sock, server_side=server_side,
                               do_handshake_on_connect=do_handshake_on_connect,
                               suppress_ragged_eofs=suppress_ragged_eofs)


if not hasattr(ssl, "wrap_socket"):
    ssl.wrap_socket = wrap_socket


# --- patches applied when a module is imported -------------------------------------------------

_patches: dict[str, list[Callable[[ModuleType], None]]] = {}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of a patched module."""

    def find_spec(self, name: str, path: object = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name not in _patches:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_module_and_patch(module: ModuleType) -> None:
            exec_module(module)
            for patch in _patches.get(name, ()):
                patch(module)

        spec.loader.exec_module = exec_module_and_patch
        return spec


_finder = _AfterImport()
sys.meta_path.insert(0, _finder)


def after_import(name: str, patch: Callable[[ModuleType], None]) -> None:
    """Run ``patch(module)`` once module ``name`` is imported (now, if it already is)."""
    _patches.setdefault(name, []).append(patch)
    if name in sys.modules:
        patch(sys.modules[name])


# --- 3. several registry_preload files -------------------------------------------------------


def _preload_each_line(model: ModuleType) -> None:
    preload_one = model.preload_registry

    def preload_registry(filename: str | None = None) -> None:
        if filename is None or "\n" not in filename:
            return preload_one(filename)
        for line in filename.splitlines():
            if line.strip():
                preload_one(line.strip())
        return None

    model.preload_registry = preload_registry


after_import("mplane.model", _preload_each_line)


# --- 4. specifications reach the component they were made for ---------------------------------


def _fulfil_for_the_same_component(model: ModuleType) -> None:
    fulfills = model.Specification.fulfills

    def fulfills_for_the_same_component(self: object, capability: object) -> bool:
        if not fulfills(self, capability):
            return False
        for name in capability.metadata_names():  # type: ignore[attr-defined]
            if self.has_metadata(name) and (  # type: ignore[attr-defined]
                    self._metadata[name].get_value()  # type: ignore[attr-defined]
                    != capability._metadata[name].get_value()):  # type: ignore[attr-defined]
                return False
        return True

    model.Specification.fulfills = fulfills_for_the_same_component


after_import("mplane.model", _fulfil_for_the_same_component)


class _OwnCapabilityClient:
    """The supervisor's component-facing client as one relay sees it: invoking "the"
    capability means the relay's own, by token, whatever label the RI passes."""

    def __init__(self, client: object, token: str) -> None:
        self._client = client
        self._token = token

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)

    def invoke_capability(self, cap_tol: str, when: object, params: object,
                          relabel: object = None) -> object:
        return self._client.invoke_capability(  # type: ignore[attr-defined]
            self._token, when, params, relabel)


def _relay_to_its_own_component(supervisor: ModuleType) -> None:
    init = supervisor.RelayService.__init__

    def init_for_its_own_component(self: object, cap: object, identity: str, client: object,
                                   lock: object, messages: object) -> None:
        init(self, cap, identity, _OwnCapabilityClient(client, cap.get_token()),  # type: ignore[attr-defined]
             lock, messages)

    supervisor.RelayService.__init__ = init_for_its_own_component


after_import("mplane.supervisor", _relay_to_its_own_component)
