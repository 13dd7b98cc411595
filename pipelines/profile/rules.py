"""Rules over profile attributes: a JSON tree validated against the policy and the gold
schema, compiled to parameterised DuckDB SQL. Segments (pipelines/activation/segments.py) and
the gold step's triggers (pipelines/profile/triggers.py) both run it, so a rule means the same
wherever it is evaluated.

A rule is a node:
- `{"and": [node, ...]}`, `{"or": [node, ...]}`, `{"not": node}`;
- `{"attr": name, "op": op, ...}` with op one of
  `= != < <= > >=` (`value`), `in` / `not_in` (`values`), `between` (`low`, `high`, inclusive),
  `is_null` / `is_not_null`, `contains` (`value`; list attributes), and for times
  `older_than` / `within` (`days`: before / since that many days ago) and `within_next`
  (`days`: from now to that many days ahead: a contract end, a promise due).

Values never become SQL text: each is a `?` parameter, and an attribute becomes a quoted column
name only after it is found among the policy's attributes. A bad node is refused with its path
(`rule.and[1].value: ...`), so the API answers 422 naming it.

Consent decides what a rule may read, person by person: a condition on an attribute is *unknown*
(SQL NULL) for a person unless the legal basis of one of the attribute's purposes is met for them
(`consent_<purpose>_granted`, which also says "contract holds"). Unknown never matches, and
`not`, `and` and `or` keep it unknown (three-valued logic), so a person's non-consented values
cannot decide whether they are a member, however the rule is written. Every path that selects
members (preview, export, push, segment events) runs this SQL, so none can leak.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa

from pipelines.config import PolicyCfg

COMPARISONS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
ORDERED = [*COMPARISONS, "in", "not_in", "between", "is_null", "is_not_null"]
OPS_BY_KIND = {  # what the page offers per attribute kind (the compiler is the authority)
    "number": ORDERED,
    "string": ORDERED,
    "time": [
        "older_than",
        "within",
        "within_next",
        "<",
        "<=",
        ">",
        ">=",
        "between",
        "is_null",
        "is_not_null",
    ],
    "bool": ["=", "!=", "is_null", "is_not_null"],
    "list": ["contains", "is_null", "is_not_null"],
}
MAX_DEPTH = 12
MAX_LIST = 1000
MAX_CHILDREN = 20  # rules under one and/or node
MAX_NUMBER = Decimal("1e15")  # rule values: beyond any balance or count, within DuckDB's range


class RuleError(ValueError):
    """A rule node that cannot be compiled; `path` names it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class Compiled:
    """A WHERE clause with `?` placeholders, its parameters, and the attributes it reads."""

    sql: str
    params: list[Any]
    attributes: frozenset[str]


def _kind(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "time"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "list" if pa.types.is_string(t.value_type) else "other"
    return "other"


def basis_met(purposes: list[str] | tuple[str, ...], schema: pa.Schema) -> str:
    """SQL that is true for a person when the legal basis of one of `purposes` (policy names,
    never user text) is met for them, as the profile's consent columns say."""
    terms = [
        f'coalesce("consent_{p}_granted", false)'
        for p in purposes
        if f"consent_{p}_granted" in schema.names
    ]
    return "(" + " OR ".join(terms) + ")" if terms else "false"


@dataclass(frozen=True)
class Operand:
    """One condition of a rule being compiled: the node, its attribute and where its SQL
    parameters go."""

    node: dict[str, Any]
    op: str
    attr: str
    kind: str
    path: str
    params: list[Any]
    now: datetime

    @property
    def column(self) -> str:
        return f'"{self.attr}"'  # safe: attr is one of the known column names


class RuleCompiler:
    """Compiles rules over the attributes the policy lists (and the gold schema has)."""

    def __init__(self, policy: PolicyCfg, schema: pa.Schema) -> None:
        self.kinds = {
            name: _kind(schema.field(name).type)
            for name in policy.attributes
            if name in schema.names and _kind(schema.field(name).type) != "other"
        }
        # Per attribute: when a person's value may take part in a decision.
        self.usable = {name: basis_met(policy.attributes[name], schema) for name in self.kinds}

    def basis(self, attr: str) -> str:
        """SQL true where `attr` may take part in a decision for the person (never for an
        attribute the policy does not list)."""
        return self.usable.get(attr, "false")

    def known(self, attr: str) -> str:
        """The attribute's column where its purpose's legal basis is met, NULL elsewhere (for
        counts and charts over members: a non-consented value is never shown, even summed)."""
        if attr not in self.usable:
            return "NULL"
        return f'(CASE WHEN {self.usable[attr]} THEN "{attr}" END)'

    def catalogue(self) -> list[dict[str, Any]]:
        """Every attribute a rule may use, with its kind and the operators that apply."""
        return [
            {"name": a, "kind": k, "ops": OPS_BY_KIND[k]} for a, k in sorted(self.kinds.items())
        ]

    def json_schema(self) -> dict[str, Any]:
        """The rule language as JSON Schema (`$ref`s to `#/components/schemas/Rule`): every
        rule it describes compiles (up to MAX_DEPTH levels, which JSON Schema cannot bound)."""
        ref = {"$ref": "#/components/schemas/Rule"}
        logic = [
            _closed(
                {"and": {"type": "array", "items": ref, "minItems": 1, "maxItems": MAX_CHILDREN}}
            ),
            _closed(
                {"or": {"type": "array", "items": ref, "minItems": 1, "maxItems": MAX_CHILDREN}}
            ),
            _closed({"not": ref}),
        ]
        conditions = []
        for kind in ("number", "string", "time", "bool", "list"):
            attrs = sorted(a for a, k in self.kinds.items() if k == kind)
            for ops, operands in _operand_schemas(kind) if attrs else []:
                conditions.append(
                    _closed({"attr": {"enum": attrs}, "op": {"enum": ops}, **operands})
                )
        return {"anyOf": [*logic, *conditions], "description": "A segment rule (docs/segments.md)"}

    def compile(self, rule: Any, now: datetime | None = None) -> Compiled:
        params: list[Any] = []
        used: set[str] = set()
        sql = self._node(rule, "rule", params, used, now or datetime.now(UTC), 0)
        return Compiled(sql, params, frozenset(used))

    def _node(
        self, node: Any, path: str, params: list[Any], used: set[str], now: datetime, depth: int
    ) -> str:
        if depth > MAX_DEPTH:
            raise RuleError(path, f"rules nest at most {MAX_DEPTH} levels deep")
        if not isinstance(node, dict):
            raise RuleError(path, "a rule node is an object")
        logic = [k for k in ("and", "or", "not") if k in node]
        if logic:
            if len(node) != 1:
                raise RuleError(path, f"a {logic[0]!r} node has no other keys")
            key = logic[0]
            if key == "not":
                inner = self._node(node["not"], f"{path}.not", params, used, now, depth + 1)
                return f"(NOT {inner})"
            children = node[key]
            if not isinstance(children, list) or not 1 <= len(children) <= MAX_CHILDREN:
                raise RuleError(f"{path}.{key}", f"expected a list of 1 to {MAX_CHILDREN} rules")
            parts = [
                self._node(c, f"{path}.{key}[{i}]", params, used, now, depth + 1)
                for i, c in enumerate(children)
            ]
            return "(" + f" {key.upper()} ".join(parts) + ")"
        return self._condition(node, path, params, used, now)

    def _condition(
        self, node: dict[str, Any], path: str, params: list[Any], used: set[str], now: datetime
    ) -> str:
        attr = node.get("attr")
        if not isinstance(attr, str):
            raise RuleError(f"{path}.attr", "expected an attribute name (or and/or/not)")
        if attr not in self.kinds:
            raise RuleError(
                f"{path}.attr",
                f"unknown attribute {attr!r}; segments can use: {', '.join(sorted(self.kinds))}",
            )
        used.add(attr)
        sql = self._test(node, attr, path, params, now)
        # Unknown (NULL, so no match, and NOT keeps it NULL) where the basis is not met.
        return f"(CASE WHEN {self.usable[attr]} THEN {sql} END)"

    def _test(
        self, node: dict[str, Any], attr: str, path: str, params: list[Any], now: datetime
    ) -> str:
        """The condition on the attribute's value, for persons whose basis is met."""
        op = node.get("op")
        if not isinstance(op, str) or op not in OPERATORS:
            raise RuleError(
                f"{path}.op",
                f"unknown op {op!r}; one of {', '.join([*COMPARISONS, 'in', 'not_in'])}, "
                "between, is_null, is_not_null, contains, older_than, within, within_next",
            )
        keys, test = OPERATORS[op]
        extra = set(node) - {"attr", "op", *keys}
        if extra:
            raise RuleError(path, f"unexpected keys {sorted(extra)} for op {op!r}")
        return test(self, Operand(node, op, attr, self.kinds[attr], path, params, now))

    def _null(self, o: Operand) -> str:
        return f"({o.column} IS {'NOT ' if o.op == 'is_not_null' else ''}NULL)"

    def _compare(self, o: Operand) -> str:
        if o.kind == "list":
            raise RuleError(f"{o.path}.op", f"{o.attr} is a list: use contains or is_null")
        o.params.append(self._value(o.node.get("value"), o.kind, f"{o.path}.value"))
        return f"({o.column} {COMPARISONS[o.op]} ?)"

    def _in(self, o: Operand) -> str:
        values = o.node.get("values")
        if not isinstance(values, list) or not values or len(values) > MAX_LIST:
            raise RuleError(f"{o.path}.values", f"expected a list of 1 to {MAX_LIST} values")
        if o.kind in ("list", "bool"):
            raise RuleError(f"{o.path}.op", f"{o.op} does not apply to {o.attr} ({o.kind})")
        for i, v in enumerate(values):
            o.params.append(self._value(v, o.kind, f"{o.path}.values[{i}]"))
        marks = ", ".join("?" * len(values))
        return f"({o.column} {'NOT IN' if o.op == 'not_in' else 'IN'} ({marks}))"

    def _between(self, o: Operand) -> str:
        if o.kind not in ("number", "time", "string"):
            raise RuleError(f"{o.path}.op", f"between does not apply to {o.attr} ({o.kind})")
        o.params.append(self._value(o.node.get("low"), o.kind, f"{o.path}.low"))
        o.params.append(self._value(o.node.get("high"), o.kind, f"{o.path}.high"))
        return f"({o.column} BETWEEN ? AND ?)"

    def _contains(self, o: Operand) -> str:
        if o.kind != "list":
            raise RuleError(f"{o.path}.op", f"contains applies to list attributes, not {o.attr}")
        o.params.append(self._value(o.node.get("value"), "string", f"{o.path}.value"))
        return f"(list_contains({o.column}, ?))"

    def _age(self, o: Operand) -> str:
        if o.kind != "time":
            raise RuleError(f"{o.path}.op", f"{o.op} applies to time attributes, not {o.attr}")
        days = o.node.get("days")
        if isinstance(days, bool) or not isinstance(days, int | float) or not 0 <= days <= 36500:
            raise RuleError(f"{o.path}.days", "expected a number of days between 0 and 36500")
        if o.op == "within_next":
            o.params.extend([o.now, o.now + timedelta(days=days)])
            return f"({o.column} BETWEEN ? AND ?)"
        o.params.append(o.now - timedelta(days=days))
        return f"({o.column} {'<' if o.op == 'older_than' else '>='} ?)"

    @staticmethod
    def _value(v: Any, kind: str, path: str) -> Any:
        if kind == "number":
            if isinstance(v, bool) or not isinstance(v, int | float | str):
                raise RuleError(path, f"expected a number, got {v!r}")
            try:
                number = Decimal(str(v))
            except ArithmeticError:
                raise RuleError(path, f"expected a number, got {v!r}") from None
            if not number.is_finite() or abs(number) > MAX_NUMBER:
                raise RuleError(path, f"expected a number between -1e15 and 1e15, got {v!r}")
            return number
        if kind == "bool":
            if not isinstance(v, bool):
                raise RuleError(path, f"expected true or false, got {v!r}")
            return v
        if kind == "time":
            if not isinstance(v, str):
                raise RuleError(path, f"expected an ISO-8601 time, got {v!r}")
            try:
                t = datetime.fromisoformat(v)
            except ValueError:
                raise RuleError(path, f"expected an ISO-8601 time, got {v!r}") from None
            return t if t.tzinfo else t.replace(tzinfo=UTC)
        if not isinstance(v, str) or len(v) > 1000:
            raise RuleError(path, f"expected a string (at most 1000 characters), got {v!r}")
        return v


def _closed(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": False,
    }


def _operand_schemas(kind: str) -> list[tuple[list[str], dict[str, Any]]]:
    """(operators, the schemas of their operands) that compile for attributes of `kind`."""
    values_of: dict[str, dict[str, Any]] = {
        "number": {"type": "number", "minimum": -float(MAX_NUMBER), "maximum": float(MAX_NUMBER)},
        "string": {"type": "string", "maxLength": 1000},
        "time": {"type": "string", "format": "date-time"},
        "bool": {"type": "boolean"},
        "list": {"type": "string", "maxLength": 1000},
    }
    value = values_of[kind]
    values = {"type": "array", "items": value, "minItems": 1, "maxItems": MAX_LIST}
    days = {"type": "number", "minimum": 0, "maximum": 36500}
    out: list[tuple[list[str], dict[str, Any]]] = [(["is_null", "is_not_null"], {})]
    if kind == "list":
        return [*out, (["contains"], {"value": value})]
    out.append(([*COMPARISONS], {"value": value}))
    if kind != "bool":
        out.append((["in", "not_in"], {"values": values}))
    if kind in ("number", "time", "string"):
        out.append((["between"], {"low": value, "high": value}))
    if kind == "time":
        out.append((["older_than", "within", "within_next"], {"days": days}))
    return out


# op -> (the keys it takes besides attr and op, the method that compiles it)
OPERATORS: dict[str, tuple[tuple[str, ...], Callable[[RuleCompiler, Operand], str]]] = {
    "is_null": ((), RuleCompiler._null),
    "is_not_null": ((), RuleCompiler._null),
    **dict.fromkeys(COMPARISONS, (("value",), RuleCompiler._compare)),
    "in": (("values",), RuleCompiler._in),
    "not_in": (("values",), RuleCompiler._in),
    "between": (("low", "high"), RuleCompiler._between),
    "contains": (("value",), RuleCompiler._contains),
    "older_than": (("days",), RuleCompiler._age),
    "within": (("days",), RuleCompiler._age),
    "within_next": (("days",), RuleCompiler._age),
}
