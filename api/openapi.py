"""The OpenAPI document as the code behaves: what only the configuration knows (purposes,
channels, sources, event types, the attributes rules may use) is written into the schemas, the
collector's body is described, and every operation lists the statuses and content types it
answers. schemathesis checks the running server against it (tests/api/test_fuzz.py)."""

from __future__ import annotations

import copy
from typing import Any

import pyarrow as pa
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.routes.profiles import PREFIX
from pipelines.activation.events import EVENT_TYPES, FILTER_FIELDS
from pipelines.config import Settings
from pipelines.identity.resolve import PERSON_ID_PATTERN
from pipelines.profile.build import profile_schema
from pipelines.profile.consent import KEY
from pipelines.profile.rules import RuleCompiler

DECIMAL = r"^-?[0-9]+(\.[0-9]+)?$"
RFC3339 = (  # with its offset, always
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
)
SCALAR = {"anyOf": [{"type": "string", "maxLength": 200}, {"type": "number"}, {"type": "boolean"}]}


def document(app: FastAPI, settings: Settings, compiler: RuleCompiler) -> None:
    """Replace `app.openapi` with the generated document plus what the configuration says."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _configured(spec, settings, compiler)
            _per_identifier_paths(spec, settings)
            _bodies_and_statuses(spec)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _schema(spec: dict[str, Any], name: str) -> dict[str, Any]:
    properties: dict[str, Any] = spec["components"]["schemas"][name]["properties"]
    return properties


def _operation(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    op: dict[str, Any] = spec["paths"][path][method]
    return op


def _parameter(op: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = next(p for p in op["parameters"] if p["name"] == name)["schema"]
    return schema


def _configured(spec: dict[str, Any], settings: Settings, compiler: RuleCompiler) -> None:
    policy = settings.policy
    spec["components"]["schemas"]["Rule"] = compiler.json_schema()
    rule = {"$ref": "#/components/schemas/Rule"}
    for name in ("RuleIn", "SegmentIn"):
        _schema(spec, name)["purpose"]["enum"] = sorted(policy.purposes)
        _schema(spec, name)["rule"] = rule
    _schema(spec, "RuleUpdate")["rule"] = rule
    columns = profile_schema(policy)
    _schema(spec, "ProfilePublic")["attributes"] = {
        "type": "object",
        "description": "Only the attributes this channel may see (conf/policy.yaml), each typed "
        "as gold.profiles holds it: decimals as strings, times as RFC 3339, absent values null",
        "properties": {
            a: nullable(value_schema(columns.field(a).type)) for a in [KEY, *policy.attributes]
        },
        "required": [KEY],
        "additionalProperties": False,
    }
    _schema(spec, "PushIn")["channel"]["enum"] = sorted(policy.channels)
    subscription = _schema(spec, "SubscriptionIn")
    subscription["event_types"]["items"]["enum"] = sorted(EVENT_TYPES)
    subscription["event_types"] |= {
        "minItems": 1,
        "maxItems": len(EVENT_TYPES),
        "uniqueItems": True,
    }
    subscription["filter"] = {
        "type": "object",
        "properties": {
            f: {"anyOf": [SCALAR, {"type": "array", "items": SCALAR, "minItems": 1}]}
            for f in sorted(FILTER_FIELDS)
        },
        "additionalProperties": False,
    }
    subscription["url"]["pattern"] = "^https?://[!-~]+$"
    stream = _operation(spec, "get", "/v1/events/stream")
    _parameter(stream, "types")["anyOf"][0]["items"]["enum"] = sorted(EVENT_TYPES)
    export = _operation(spec, "get", "/v1/segments/{segment_id}/export")
    _parameter(export, "channel")["enum"] = sorted(policy.channels)
    collect = _operation(spec, "post", "/v1/collect/{source}")
    _parameter(collect, "source")["enum"] = sorted(settings.contracts)
    collect["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }


def value_schema(t: pa.DataType) -> dict[str, Any]:
    """JSON Schema of a gold.profiles value as a profile body encodes it (api.render)."""
    if pa.types.is_boolean(t):
        return {"type": "boolean"}
    if pa.types.is_integer(t):
        return {"type": "integer"}
    if pa.types.is_floating(t):
        return {"type": "number"}
    if pa.types.is_decimal(t):
        return {"type": "string", "pattern": DECIMAL}
    if pa.types.is_timestamp(t):
        return {"type": "string", "format": "date-time", "pattern": RFC3339}
    if pa.types.is_date(t):
        return {"type": "string", "format": "date"}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return {"type": "array", "items": nullable(value_schema(t.value_type))}
    if pa.types.is_struct(t):
        fields = {f.name: nullable(value_schema(f.type)) for f in t}
        return {"type": "object", "properties": fields, "additionalProperties": False}
    return {"type": "string"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def identifier_patterns(settings: Settings) -> dict[str, str]:
    """Per identifier type, the spellings a lookup accepts (api.routes.profiles.valid is the
    authority; these are the forms it documents)."""
    country = settings.identity.country
    cc, n = country.calling_code, country.national_number_length
    anything = r"^.*\S.*$"
    return {
        "msisdn": rf"^(\+?{cc}[0-9]{{{n}}}|0?[0-9]{{{n}}})$",
        "iccid": anything,
        "account_id": anything,
        "app_user_id": anything,
        "email": r"^[^@\s/]+@[^@\s/]+$",
        "passport": anything,
        "person_id": PERSON_ID_PATTERN,
    }


BY_IDENTIFIER = (  # (prefix, suffix) of the paths that take {id_type}/{id_value}
    (PREFIX, ""),
    (PREFIX, "/as-of"),
    ("/v1/audit/by", ""),
    ("/v1/audit/pushes/by", ""),
    ("/v1/persons", "/export"),
)


def _per_identifier_paths(spec: dict[str, Any], settings: Settings) -> None:
    """`/v1/profiles/{id_type}/{id_value}` (and the audit's) as one path per identifier type,
    each with the format of its value, so that a client (and schemathesis) knows what each
    type takes."""
    patterns = identifier_patterns(settings)
    for prefix, suffix in BY_IDENTIFIER:
        template = spec["paths"].pop(f"{prefix}/{{id_type}}/{{id_value}}{suffix}")
        for id_type, pattern in patterns.items():
            methods = copy.deepcopy(template)
            for name, op in methods.items():
                op["operationId"] = f"{op['operationId']}_{id_type}"
                op["parameters"] = [p for p in op["parameters"] if p["name"] != "id_type"]
                value = next(p for p in op["parameters"] if p["name"] == "id_value")
                value["schema"] = {"type": "string", "pattern": pattern, "title": id_type}
                value["description"] = f"The {id_type}"
                assert name == "get"
            spec["paths"][f"{prefix}/{id_type}/{{id_value}}{suffix}"] = methods


def _bodies_and_statuses(spec: dict[str, Any]) -> None:
    """400 (a body that is not JSON) only where a body is read; /metrics is Prometheus text."""
    for methods in spec["paths"].values():
        for op in methods.values():
            if "requestBody" not in op:
                op["responses"].pop("400", None)
    metrics = _operation(spec, "get", "/metrics")
    metrics["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
