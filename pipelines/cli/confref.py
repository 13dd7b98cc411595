"""The configuration reference (docs/config.md), generated from the pydantic models that read
`conf/`: every key of every file with its type, default and what it is for (the field's
description, else the comment beside or above it in pipelines/config.py). `cdp config reference`
prints it; a test checks that docs/config.md is what it prints, so the reference cannot drift
from the code."""

from __future__ import annotations

import ast
import inspect
import io
import tokenize
import types
import typing
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipelines import config
from pipelines.config import (
    ApiCfg,
    EngineCfg,
    GeneratorCfg,
    IdentityCfg,
    PathsCfg,
    PolicyCfg,
    ProfileCfg,
    ReferenceContract,
    RetentionCfg,
    ScoresCfg,
    SlaCfg,
    SourceCfg,
    SourceContract,
    TriggersCfg,
)

# (file under conf/, top-level key or None for the whole file, its model)
FILES: list[tuple[str, str | None, type[BaseModel]]] = [
    ("engine.yaml", "engine", EngineCfg),
    ("engine.yaml", "paths", PathsCfg),
    ("engine.yaml", "source", SourceCfg),
    ("identity.yaml", None, IdentityCfg),
    ("profile.yaml", None, ProfileCfg),
    ("scores.yaml", None, ScoresCfg),
    ("policy.yaml", None, PolicyCfg),
    ("api.yaml", None, ApiCfg),
    ("sla.yaml", None, SlaCfg),
    ("triggers.yaml", None, TriggersCfg),
    ("retention.yaml", None, RetentionCfg),
    ("generator.yaml", None, GeneratorCfg),
    ("contracts/<source>.yaml", None, SourceContract),
    ("contracts/reference.yaml", None, ReferenceContract),
]

ENVIRONMENT = [
    ("CDP_CONF_DIR", "the conf folder (default ./conf; `--conf` wins)"),
    ("CDP_DATA_ROOT", "one folder for lake, landing, checkpoints and truth (engine.yaml paths)"),
    ("CDP_LAKE_ROOT, CDP_LANDING_ROOT, CDP_CHECKPOINT_ROOT, CDP_TRUTH_ROOT", "one of the paths"),
    ("CDP_SPARK_MASTER", "engine.spark_master"),
    ("CDP_STREAM_METRICS_PORT, CDP_STREAM_METRICS_HOST", "engine.metrics_port, metrics_host"),
    ("CDP_SOURCE_KIND", "source.kind (files or kafka)"),
    ("CDP_KAFKA_BOOTSTRAP_SERVERS, CDP_KAFKA_TOPIC_PREFIX", "source.kafka.*"),
    ("CDP_KAFKA_SASL_PASSWORD, CDP_KAFKA_SSL_KEY_PASSWORD", "Kafka secrets (names in conf)"),
    ("CDP_API_HOST, CDP_API_PORT, CDP_API_WORKERS", "api.host, api.port, api.workers"),
    ("CDP_API_SNAPSHOT_POLL_S, CDP_API_DATABASE_URL", "api.snapshot_poll_s, api.database_url"),
    ("CDP_ENDPOINT_<CHANNEL>", "a channel's push endpoint URL (wins over api.yaml)"),
    ("CDP_ENDPOINT_SECRET_<CHANNEL>", "its signing secret (or the variable api.yaml names)"),
    ("CDP_EVENTS_DELIVER", "false: `cdp serve` starts no deliverer"),
]


def reference() -> str:
    """docs/config.md as it should read."""
    out = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models in `pipelines/config.py` by `cdp config reference`",
        "(tests/unit/test_config_reference.py fails when this file is out of date). Every file",
        "lives under `conf/` (or `$CDP_CONF_DIR`); unknown keys are refused, naming the file.",
        "",
    ]
    for file, key, model in FILES:
        where = f"`{file}`" + (f", key `{key}`" if key else "")
        out += [f"## {where}", ""]
        if doc := inspect.getdoc(model):
            out += [" ".join(doc.split()), ""]
        out += ["| key | type | default | what |", "| --- | --- | --- | --- |"]
        out += [_row(*r) for r in _fields(model, key or "")]
        out.append("")
    out += ["## Environment", "", "| variable | sets |", "| --- | --- |"]
    out += [f"| `{name}` | {what} |" for name, what in ENVIRONMENT]
    return "\n".join(out) + "\n"


def _row(key: str, kind: str, default: str, what: str) -> str:
    cells = [f"`{key}`", kind, default, what]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _fields(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str, str, str]]:
    notes = _comments(model)
    for name, info in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        nested = _model_in(info.annotation)
        what = info.description or notes.get(name, "")
        if nested is not None and not _is_mapping(info.annotation):
            yield key, "mapping", "", what or (inspect.getdoc(nested) or "").split("\n")[0]
            yield from _fields(nested, key)
            continue
        yield key, _type_name(info.annotation), _default(info), " ".join(what.split())
        if nested is not None:  # a mapping of names to models: their keys under `<name>`
            yield from _fields(nested, f"{key}.<name>")


def _default(info: Any) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return ""
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return ""
    text = repr(value) if not isinstance(value, Path) else str(value)
    return f"`{text}`" if len(text) <= 40 else f"`{text[:37]}...`"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (list, tuple, set, frozenset):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (itself, optional, or as a mapping's values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def _is_mapping(annotation: Any) -> bool:
    return typing.get_origin(annotation) is dict


@cache
def _module_comments() -> dict[str, dict[str, str]]:
    """Per class of pipelines/config.py, per field: the comment beside its line, else the
    comment lines right above it."""
    source = Path(inspect.getfile(config)).read_text()
    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        notes: dict[str, str] = {}
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                line = item.lineno
                if line in by_line and not lines[line - 1].lstrip().startswith("#"):
                    notes[item.target.id] = by_line[line]
                    continue
                above: list[str] = []
                n = line - 1
                while n in by_line and lines[n - 1].lstrip().startswith("#"):
                    above.insert(0, by_line[n])
                    n -= 1
                if above:
                    notes[item.target.id] = " ".join(above)
        out[node.name] = notes
    return out


def _comments(model: type[BaseModel]) -> dict[str, str]:
    return _module_comments().get(model.__name__, {})
