"""Plain, self-contained HTML pages for reports a person or a regulator reads (no script, no
external asset): a title, sections, and tables of escaped cells."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

STYLE = (
    "body{font-family:sans-serif;margin:2rem}table{border-collapse:collapse;font-size:.85rem}"
    "td,th{border:1px solid #ccc;padding:.2rem .4rem;text-align:left;vertical-align:top}"
)


def cell(value: Any) -> str:
    """A value as table text: strings as they are, lists joined, anything else as JSON."""
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return html.escape("; ".join(value))
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return html.escape(text)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as a table (columns: the given ones, else every key in order of appearance)."""
    if not rows:
        return "<p>None.</p>"
    cols = list(columns or dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str) -> str:
    """A whole page around `body` (already escaped HTML)."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )
