# SPDX-License-Identifier: Apache-2.0
"""The daemon's mPlane model and temporal scopes against the RI's captured messages."""

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from probe_daemon.model import (
    MessageError,
    MPlaneException,
    Statement,
    envelope,
    parse_messages,
    parse_statement,
)
from probe_daemon.registry import ParameterError, check_parameter
from probe_daemon.when import When, WhenError, format_time, parse_duration, within

WIRE = Path(__file__).resolve().parents[2] / "shared" / "mplane-wire"


def wire(name: str) -> dict:
    return json.loads((WIRE / name).read_text())


def test_parses_captured_specification_envelope():
    body = wire("http/09_component_GET_show_specification_envelope.json")["response"]["body"]
    [spec] = parse_messages(json.dumps(body).encode())
    assert spec.kind == "specification" and spec.verb == "measure"
    assert spec.label == "ping-average-ip4-0"
    assert spec.parameters == {"destination.ip4": "127.0.0.1", "source.ip4": "127.0.0.1"}
    assert spec.when == "now + 3s / 1s"


def test_receipt_and_result_match_what_the_ri_component_sends():
    body = wire("http/09_component_GET_show_specification_envelope.json")["response"]["body"]
    [spec] = parse_messages(json.dumps(body).encode())
    receipt = spec.derive("receipt", link=None).to_json()
    ri_receipt = wire("http/11_component_POST_register_result_receipt.json")["request"]["body"]
    assert receipt == ri_receipt
    result = spec.derive("result", link=None, resultvalues=[["47", "50", "53", "3"]],
                         when=ri_result_when()).to_json()
    ri_result = wire("http/14_component_POST_register_result_result.json")["request"]["body"]
    assert result == ri_result


def ri_result_when() -> str:
    return wire("http/14_component_POST_register_result_result.json")["request"]["body"]["when"]


def test_capability_registration_envelope_has_the_ri_shape():
    ri = wire("http/01_component_POST_register_capability_envelope.json")["request"]["body"]
    cap = parse_statement(ri["contents"][0])
    ours = envelope([cap])
    assert ours["envelope"] == "message" and ours["version"] == 1
    assert ours["contents"][0] == ri["contents"][0]


@pytest.mark.parametrize("name", ["model_interrupt.json", "model_interrupt.token_only.json",
                                  "model_withdrawal.json", "model_exception.json"])
def test_parses_model_messages(name):
    message = parse_statement(wire(f"messages/{name}"))
    if isinstance(message, MPlaneException):
        assert message.message == "Unknown job"
    else:
        assert message.token and message.kind in ("interrupt", "withdrawal")


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"specification": "dance"}',
                                  b'{"envelope": "message", "contents": 3}',
                                  b'{"specification": "measure", "results": "x"}',
                                  b'{"specification": "measure", "version": 2}',
                                  b"\xff\xfe"])
def test_malformed_messages_raise_message_error(body):
    with pytest.raises(MessageError):
        parse_messages(body)


def test_capability_token_is_stable():
    cap = Statement(kind="capability", label="x", parameters={"a": "*"}, results=["b"])
    assert cap.schema_token() == Statement(**cap.__dict__).schema_token()
    assert cap.schema_token() != cap.derive("capability", label="y").schema_token()


# -- when ------------------------------------------------------------------------------------

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "start", "end", "period"), [
    ("now", NOW, NOW, None),
    ("now + 30s", NOW, NOW + timedelta(seconds=30), None),
    ("now + 3s / 1s", NOW, NOW + timedelta(seconds=3), timedelta(seconds=1)),
    ("now ... future", NOW, None, None),
    ("now ... future / 10s", NOW, None, timedelta(seconds=10)),
    ("2026-11-22 12:00:05 ... 2026-11-22 12:01:00", NOW + timedelta(seconds=5),
     NOW + timedelta(minutes=1), None),
    ("2026-11-22 12:00:10.500000", NOW + timedelta(seconds=10.5),
     NOW + timedelta(seconds=10.5), None),
    ("2026-11-22 11:00:00 + 1h30m", NOW, datetime(2026, 11, 22, 12, 30, tzinfo=UTC), None),
])
def test_when_bounds(text, start, end, period):
    when = When.parse(text)
    assert when.bounds(NOW) == (start, end)
    assert when.period == period


@pytest.mark.parametrize("text", ["", "tomorrow", "now + 3x", "now / 0s",
                                  "2026-11-22 12:00 ... 2026-11-21 12:00", "now + "])
def test_bad_when_is_refused(text):
    with pytest.raises(WhenError):
        When.parse(text)


def test_duration_round_trip():
    assert parse_duration("1d2h3m4s") == timedelta(days=1, hours=2, minutes=3, seconds=4)
    assert format_time(NOW) == "2026-11-22 12:00:00.000000"


def test_ticks_follow_the_period_and_stop():
    stop = threading.Event()
    now = datetime.now(UTC)
    ticks = list(When.parse("now + 2s / 1s").ticks(now, stop))
    assert len(ticks) == 2
    assert ticks[1] - ticks[0] == timedelta(seconds=1)
    stop.set()
    assert list(When.parse("now ... future / 1s").ticks(datetime.now(UTC), stop)) == []


def test_open_ended_ticks_until_stopped():
    stop = threading.Event()
    timer = threading.Timer(1.5, stop.set)
    timer.start()
    ticks = list(When.parse("now ... future / 1s").ticks(datetime.now(UTC), stop))
    assert len(ticks) == 2


def test_scope_must_be_within_the_capability():
    cap = When.parse("now ... future / 1s")
    assert within(cap, When.parse("now + 3s / 1s"))
    assert not within(When.parse("now ... future / 10s"), When.parse("now + 30s / 1s"))
    assert not within(When.parse("now + 60s"), When.parse("now ... future"))


# -- parameters ------------------------------------------------------------------------------

def test_parameter_constraints():
    check_parameter("destination.ip4", "address", "*", "192.0.2.1")
    check_parameter("source.ip4", "address", "127.0.0.1", "127.0.0.1")
    check_parameter("dns.type", "string", "A,AAAA", "AAAA")
    check_parameter("packets.ip", "natural", "1 ... 10", "10")
    for args in (("destination.ip4", "address", "*", "999.1.1.1"),
                 ("source.ip4", "address", "127.0.0.1", "127.0.0.2"),
                 ("dns.type", "string", "A,AAAA", "MX"),
                 ("packets.ip", "natural", "1 ... 10", "11"),
                 ("packets.ip", "natural", "*", "-1"),
                 ("destination.url", "url", "*", "ftp://x/"),
                 ("destination.url", "url", "*", "http://x:99999/"),
                 ("dns.name", "string", "*", "x" * 5000)):
        with pytest.raises(ParameterError):
            check_parameter(*args)
