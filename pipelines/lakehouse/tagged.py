"""Rows of several kinds in one frame, so that one Python call on an executor gets every input
of its group and returns every output.

Spark hands a grouped Arrow function one frame per group (or two, cogrouped) and takes one frame
back. A stage whose Python step needs several inputs (the nodes, counters, facts and stored
profiles of a set of persons) or gives several outputs (profile rows, change events) tags each
row with its kind and prefixes each kind's columns with it: `kind__column`, null in the other
kinds' rows. Every row carries every kind's columns, and Spark converts each cell, null or not,
to Arrow: kinds with many rows and few columns go on one side of a cogroup and the wide ones on
the other (`apply_cogrouped`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import reduce

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructType

from pipelines.lakehouse.arrowtypes import spark_ready

KIND = "row_kind"


def spark_schema(schema: pa.Schema) -> StructType:
    return from_arrow_schema(spark_ready(schema))


def combined(kinds: Mapping[str, pa.Schema], shared: pa.Schema | None = None) -> pa.Schema:
    """One schema for rows of every kind: the kind, the `shared` columns (a grouping key),
    then each kind's columns as `kind__column`."""
    fields = [pa.field(KIND, pa.string())]
    fields += list(spark_ready(shared or pa.schema([])))
    for kind, schema in kinds.items():
        fields += [pa.field(f"{kind}__{f.name}", f.type) for f in spark_ready(schema)]
    return pa.schema(fields)


def tag_frames(frames: Mapping[str, DataFrame], shared: list[str]) -> DataFrame:
    """Spark frames of several kinds as one (each keeps its `shared` columns unprefixed)."""
    parts = [
        frame.select(
            F.lit(kind).alias(KIND),
            *shared,
            *[F.col(f"`{c}`").alias(f"{kind}__{c}") for c in frame.columns if c not in shared],
        )
        for kind, frame in frames.items()
    ]
    return reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), parts)


def untag(table: pa.Table, kind: str, schema: pa.Schema) -> pa.Table:
    """The rows of one kind of a tagged Arrow table, in `schema` (columns absent: null)."""
    rows = table.filter(pc.equal(table.column(KIND), kind))
    names = set(rows.column_names)
    columns = [
        rows.column(f"{kind}__{f.name}").cast(f.type)
        if f"{kind}__{f.name}" in names
        else pa.nulls(rows.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def tag_tables(tables: Mapping[str, pa.Table], schema: pa.Schema) -> pa.Table:
    """Arrow tables of several kinds as one table of `schema` (made by `combined`)."""
    parts = []
    for kind, table in tables.items():
        n = table.num_rows
        columns = []
        for f in schema:
            name = f.name.removeprefix(f"{kind}__")
            if f.name == KIND:
                columns.append(pa.array([kind] * n, pa.string()))
            elif f.name.startswith(f"{kind}__") and name in table.column_names:
                columns.append(table.column(name).cast(f.type))
            else:
                columns.append(pa.nulls(n, f.type))
        parts.append(pa.Table.from_arrays(columns, schema=schema))
    return pa.concat_tables(parts) if parts else schema.empty_table()


def kind_of(frame: DataFrame, kind: str, schema: pa.Schema) -> DataFrame:
    """The rows of one kind of a tagged Spark frame, with their own column names."""
    return frame.where(F.col(KIND) == kind).select(
        *[F.col(f"`{kind}__{f.name}`").alias(f.name) for f in schema]
    )


def apply_grouped(
    frame: DataFrame,
    key: str,
    func: Callable[[pa.Table], pa.Table],
    out: pa.Schema,
) -> DataFrame:
    """`func` on each group of rows sharing `key`, in Python workers on the executors; it
    returns a table of `out` (a `combined` schema)."""

    def run(table: pa.Table) -> pa.Table:
        return func(table).cast(out)

    return frame.groupBy(key).applyInArrow(run, spark_schema(out))


def apply_cogrouped(
    left: DataFrame,
    right: DataFrame,
    key: str,
    func: Callable[[pa.Table, pa.Table], pa.Table],
    out: pa.Schema,
) -> DataFrame:
    """`func` on each group of `key` with the rows of both frames (either may be empty), in
    Python workers on the executors; it returns a table of `out` (a `combined` schema)."""

    def run(lefts: pa.Table, rights: pa.Table) -> pa.Table:
        return func(lefts, rights).cast(out)

    # Fresh column identities on one side: both are often derived from one frame (the same
    # persons), which Spark would otherwise find ambiguous.
    right = right.select(*[F.col(f"`{c}`").alias(c) for c in right.columns])
    return left.groupBy(key).cogroup(right.groupBy(key)).applyInArrow(run, spark_schema(out))
