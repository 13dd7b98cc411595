"""Strict decoding of the events a source posts: UTF-8 only, RFC 8259 JSON only (no NaN or
Infinity, which Python's json accepts and Spark would land as non-standard JSON), and bounded in
events per body, nesting depth and string length. A violation is a `BodyError` naming the line
and the limit, answered as 400 (malformed) or 413 (too large), never a server error."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class BodyError(ValueError):
    """A body the collector refuses: the HTTP status and what is wrong, for the caller."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    max_events: int
    max_depth: int
    max_string_chars: int


def reject_constant(name: str) -> Any:
    """`parse_constant` for json.loads: NaN, Infinity and -Infinity are not RFC 8259 JSON."""
    raise ValueError(f"{name} is not a JSON number (RFC 8259); send null or a string")


def parse_events(body: bytes, ndjson: bool, source: str, limits: Limits) -> list[dict[str, Any]]:
    """The events of a body: one JSON object, or NDJSON lines (blank lines skipped)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(
            400, f"body is not UTF-8: invalid byte 0x{body[exc.start]:02x} at offset {exc.start}"
        ) from None
    # Lines end at "\n" only: a JSON string may hold U+2028 and others that splitlines() splits.
    lines = [ln for ln in text.split("\n") if ln.strip()] if ndjson else [text]
    if not text.strip():
        raise BodyError(400, "empty body: send one JSON event or NDJSON lines")
    if len(lines) > limits.max_events:
        raise BodyError(
            413, f"{len(lines)} events in one body; at most {limits.max_events} (api.max_events)"
        )
    return [_event(line, n, source, limits) for n, line in enumerate(lines, start=1)]


def _event(line: str, n: int, source: str, limits: Limits) -> dict[str, Any]:
    try:
        event = json.loads(line, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        raise BodyError(400, f"line {n}: not JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise BodyError(
            400, f"line {n}: nested deeper than {limits.max_depth} (api.max_json_depth)"
        ) from None
    except ValueError as exc:  # NaN, Infinity, -Infinity
        raise BodyError(400, f"line {n}: {exc}") from None
    if not isinstance(event, dict):
        raise BodyError(400, f"line {n}: an event is a JSON object")
    _check_bounds(event, n, limits)
    if event.get("source", source) != source:
        raise BodyError(400, f"line {n}: source {event['source']!r} posted to {source!r}")
    return event


def _check_bounds(event: dict[str, Any], n: int, limits: Limits) -> None:
    """Depth and string length, walked without recursion."""
    stack: list[tuple[Any, int]] = [(event, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limits.max_depth:
            raise BodyError(
                400, f"line {n}: nested deeper than {limits.max_depth} (api.max_json_depth)"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                _check_string(key, n, limits)
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            _check_string(value, n, limits)


def _check_string(value: str, n: int, limits: Limits) -> None:
    if len(value) > limits.max_string_chars:
        raise BodyError(
            413,
            f"line {n}: a string of {len(value)} characters; at most {limits.max_string_chars} "
            "(api.max_string_chars)",
        )
