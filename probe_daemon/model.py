# SPDX-License-Identifier: Apache-2.0
"""mPlane messages as the reference implementation puts them on the wire.

Every statement is a JSON object whose kind is the key holding its verb
(``{"capability": "measure", ...}``); exceptions carry a token and a message; envelopes
carry a list of statements. Field names and order follow the captured RI messages.
"""

import json
from dataclasses import dataclass, field
from typing import Any

try:
    # CPython's own MD5. hashlib sets up every digest OpenSSL offers when imported: 0.7 MB
    # of a MiniProbe's memory for one hash of each capability at start.
    from _md5 import md5
except ImportError:  # a Python built without its own hashes
    from hashlib import md5

REGISTRY_CORE = "http://ict-mplane.eu/registry/core"
CONTENT_TYPE = "application/x-mplane+json"
VERSION = 1
STATEMENT_KINDS = ("capability", "specification", "receipt", "result", "interrupt",
                   "withdrawal", "redemption")
VERBS = ("measure", "query", "collect", "store", "callback")


class MessageError(ValueError):
    """A message that is not valid mPlane; its text goes back to the peer."""


@dataclass
class Statement:
    kind: str
    label: str
    verb: str = "measure"
    token: str = ""
    when: str = "now"
    parameters: dict[str, str] = field(default_factory=dict)
    results: list[str] = field(default_factory=list)
    resultvalues: list[list[str]] = field(default_factory=list)
    registry: str = REGISTRY_CORE
    link: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.kind: self.verb, "version": VERSION,
                               "registry": self.registry, "label": self.label}
        if self.token:
            out["token"] = self.token
        if self.when:
            out["when"] = self.when
        if self.link is not None:
            out["link"] = self.link
        if self.parameters:
            out["parameters"] = dict(self.parameters)
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        if self.results:
            out["results"] = list(self.results)
        if self.kind == "result":
            out["resultvalues"] = [list(row) for row in self.resultvalues]
        return out

    def derive(self, kind: str, **changes: Any) -> "Statement":
        """A statement of another kind about the same thing (receipt, result ...)."""
        data = {**self.__dict__, "kind": kind, **changes}
        return Statement(**data)

    def schema_token(self) -> str:
        """The RI's capability token: a hash of what the statement offers, stable across runs.
        Metadata counts: it names the probe (source.device), and the RI supervisor keeps one
        capability per token, so two probes' identical measurements need two tokens."""
        offered: list[Any] = [self.kind, self.verb, self.label, self.registry, self.when,
                              sorted(self.parameters.items()), self.results]
        if self.metadata:
            offered.append(sorted(self.metadata.items()))
        canonical = json.dumps(offered)
        return md5(canonical.encode(), usedforsecurity=False).hexdigest()


@dataclass
class MPlaneException:
    token: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"exception": self.token, "message": self.message}


Message = Statement | MPlaneException


def envelope(messages: list[Message]) -> dict[str, Any]:
    return {"envelope": "message", "version": VERSION,
            "contents": [m.to_json() for m in messages]}


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MessageError(f"{what} must be an object")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def parse_statement(data: Any) -> Message:
    if not isinstance(data, dict):
        raise MessageError("a message must be a JSON object")
    if "exception" in data:
        return MPlaneException(token=str(data.get("exception", "")),
                               message=str(data.get("message", "")))
    kinds = [k for k in STATEMENT_KINDS if k in data]
    if len(kinds) != 1:
        raise MessageError("not an mPlane statement (no single statement kind)")
    kind = kinds[0]
    verb = data[kind]
    if verb not in VERBS:
        raise MessageError(f"unknown verb {verb!r}")
    if data.get("version", VERSION) != VERSION:
        raise MessageError(f"unsupported mPlane version {data.get('version')!r}")
    label = data.get("label", "")
    token = data.get("token", "")
    when = data.get("when", "now")
    results = data.get("results") or []
    if not isinstance(label, str) or not isinstance(token, str) or not isinstance(when, str):
        raise MessageError("label, token and when must be strings")
    if not isinstance(results, list) or not all(isinstance(r, str) for r in results):
        raise MessageError("results must be a list of element names")
    rows = data.get("resultvalues") or []
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise MessageError("resultvalues must be a list of rows")
    return Statement(
        kind=kind, verb=verb, label=label, token=token, when=when,
        parameters=_str_map(data.get("parameters"), "parameters"), results=results,
        resultvalues=[[str(v) for v in row] for row in rows],
        registry=str(data.get("registry", REGISTRY_CORE)),
        link=data.get("link") if isinstance(data.get("link"), str) else None,
        metadata=_str_map(data.get("metadata"), "metadata"),
    )


def parse_messages(body: bytes) -> list[Message]:
    """Parse a body holding one message or an envelope of them."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"body is not JSON: {exc}") from None
    if isinstance(data, dict) and "envelope" in data:
        contents = data.get("contents")
        if not isinstance(contents, list):
            raise MessageError("envelope without a contents list")
        return [parse_statement(item) for item in contents]
    return [parse_statement(data)]


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True).encode()
