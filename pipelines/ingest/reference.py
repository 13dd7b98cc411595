"""Reference loads: batch CSV files (tariffs, products, segments) into `ref.<table>` Delta tables.

Reloading an unchanged file is a no-op (the file's SHA-256 is kept in the commit metadata); a
changed file replaces the table in one new version, so earlier versions stay readable for audits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from pipelines.config import RefColumn, ReferenceContract, RefTableSpec
from pipelines.lakehouse.catalog import ref_table
from pipelines.lakehouse.lake import Lake


class ReferenceFileError(ValueError):
    """A reference file does not match its contract; the message names file, row and column."""


@dataclass(frozen=True)
class RefLoad:
    table: str
    rows: int
    version: int | None
    changed: bool


def _arrow_type(col: RefColumn) -> pa.DataType:
    return {
        "string": pa.string(),
        "integer": pa.int64(),
        "decimal": pa.decimal128(col.precision, col.scale),
        "double": pa.float64(),
        "boolean": pa.bool_(),
        "date": pa.date32(),
    }[col.type]


def reference_schema(spec: RefTableSpec) -> pa.Schema:
    """The typed columns of a reference table (what readers get before any file is loaded)."""
    return pa.schema([(n, _arrow_type(c)) for n, c in spec.columns.items()])


def _convert(text: str | None, col: RefColumn, where: str) -> object:
    if text is None or text.strip() == "":
        if col.required:
            raise ReferenceFileError(f"{where}: value is required")
        return None
    text = text.strip()
    try:
        if col.type == "integer":
            return int(text)
        if col.type == "decimal":
            return Decimal(text).quantize(Decimal(1).scaleb(-col.scale))
        if col.type == "double":
            return float(text)
        if col.type == "boolean":
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
    except (ValueError, InvalidOperation):
        raise ReferenceFileError(f"{where}: expected {col.type}, got {text!r}") from None
    return text


def parse_reference(path: Path, spec: RefTableSpec) -> pa.Table:
    """Read one reference CSV and type it by its contract, or say exactly what is wrong."""
    names = list(spec.columns)
    raw = pacsv.read_csv(
        path, convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
    )
    missing = [n for n in names if n not in raw.column_names and spec.columns[n].required]
    if missing:
        raise ReferenceFileError(
            f"{path}: missing column(s) {missing}; the contract expects {names} "
            "(fix the header or conf/contracts/reference.yaml)"
        )
    columns: dict[str, list[object]] = {n: [] for n in names}
    rows = raw.select([n for n in names if n in raw.column_names]).to_pylist()
    seen: set[object] = set()
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        for n in names:
            where = f"{path}:{i}: column {n}"
            columns[n].append(_convert(row.get(n), spec.columns[n], where))
        key = columns[spec.key][-1]
        if key in seen:
            raise ReferenceFileError(f"{path}:{i}: duplicate {spec.key} {key!r}")
        seen.add(key)
    schema = reference_schema(spec)
    return pa.table({n: pa.array(columns[n], schema.field(n).type) for n in names})


def load_reference(lake: Lake, contract: ReferenceContract, folder: Path) -> list[RefLoad]:
    """Load every reference file that exists under `folder`; unchanged files are skipped."""
    out = []
    for name, spec in contract.tables.items():
        path = folder / spec.file
        if not path.exists():
            continue
        table = ref_table(name)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        current = lake.table(table)
        if current is not None and lake.last_metadata(table).get("source_sha256") == digest:
            out.append(RefLoad(table, current.count(), current.version(), False))
            continue
        data = parse_reference(path, spec)
        lake.overwrite(
            table,
            data,
            stage=f"reference.{name}",
            metadata={"source_sha256": digest, "source_file": str(path)},
        )
        out.append(RefLoad(table, data.num_rows, lake.version(table), True))
    return out
