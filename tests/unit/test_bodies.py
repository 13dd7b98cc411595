"""What the collector accepts from a source, and what it refuses with a reason: the probes of
hostile input (not UTF-8, NaN, deep nesting, huge strings, too many events)."""

from __future__ import annotations

import json

import pytest

from api.bodies import BodyError, Limits, parse_events

pytestmark = pytest.mark.unit

LIMITS = Limits(max_events=100, max_depth=16, max_string_chars=10_000)
EVENT = {"event_id": "app-1", "source": "app", "event_type": "open", "app_user_id": "u1"}


def refused(body: bytes, ndjson: bool = False) -> BodyError:
    with pytest.raises(BodyError) as err:
        parse_events(body, ndjson, "app", LIMITS)
    return err.value


def test_valid_events_pass_unchanged_including_unicode_line_separators() -> None:
    note = dict(EVENT, note="a\u2028b\u0085c")  # legal inside a JSON string
    body = "\n".join(json.dumps(e, ensure_ascii=False) for e in (EVENT, note)).encode()
    assert parse_events(body, True, "app", LIMITS) == [EVENT, note]
    assert parse_events(json.dumps(EVENT).encode(), False, "app", LIMITS) == [EVENT]
    crlf = (json.dumps(EVENT) + "\r\n" + json.dumps(EVENT) + "\r\n").encode()
    assert len(parse_events(crlf, True, "app", LIMITS)) == 2


def test_a_body_that_is_not_utf8_is_a_400_naming_the_byte() -> None:
    err = refused(b'{"a":"\xff"}')
    assert err.status == 400 and "not UTF-8" in err.detail and "0xff at offset 6" in err.detail
    assert refused(b'{"a":"\xff"}', ndjson=True).status == 400


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(constant: str) -> None:
    err = refused(f'{{"event_id": "x", "amount": {constant}}}'.encode())
    assert err.status == 400 and f"{constant} is not a JSON number" in err.detail


def test_deep_nesting_is_refused_without_recursing() -> None:
    brackets = refused(b"[" * 100_000 + b"]" * 100_000)
    assert brackets.status == 400 and "api.max_json_depth" in brackets.detail
    nested: dict[str, object] = {"event_id": "x"}
    for _ in range(40):
        nested = {"a": nested}
    deep = refused(json.dumps(nested).encode(), ndjson=True)
    assert deep.status == 400 and deep.detail.startswith("line 1: nested deeper than 16")
    ok: dict[str, object] = {"event_id": "x"}
    for _ in range(14):
        ok = {"a": ok}
    assert parse_events(json.dumps(ok).encode(), False, "app", LIMITS) == [ok]


def test_oversized_strings_and_batches_are_413() -> None:
    long = refused(json.dumps(dict(EVENT, note="x" * 10_001)).encode())
    assert long.status == 413 and "api.max_string_chars" in long.detail
    key = refused(json.dumps({"k" * 10_001: 1}).encode())
    assert key.status == 413
    many = refused(("\n".join(json.dumps(EVENT) for _ in range(101))).encode(), ndjson=True)
    assert many.status == 413 and "101 events" in many.detail and "api.max_events" in many.detail


def test_malformed_lines_name_their_number() -> None:
    assert refused(b"").detail.startswith("empty body")
    second = refused(b'{"event_id": 1}\n{"event_id": ', ndjson=True)
    assert second.status == 400 and second.detail.startswith("line 2: not JSON")
    assert refused(b"[1, 2]").detail == "line 1: an event is a JSON object"
    other = refused(json.dumps(dict(EVENT, source="crm")).encode())
    assert other.detail == "line 1: source 'crm' posted to 'app'"
