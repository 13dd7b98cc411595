"""Arrow types as Spark exchanges them (plain strings, binaries and lists; microsecond
timestamps), without importing Spark: tables built by Polars or delta-rs are cast to these before
they meet a Spark frame, and schemas shared with Spark are declared in them."""

from __future__ import annotations

import pyarrow as pa


def spark_arrow_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type Spark exchanges for `t` (same values): plain strings, binaries and lists,
    microsecond timestamps."""
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_dictionary(t):
        return spark_arrow_type(t.value_type)
    if pa.types.is_null(t):
        return pa.string()
    if pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_list(t):
        return pa.list_(pa.field(t.value_field.name, spark_arrow_type(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, spark_arrow_type(f.type), f.nullable) for f in t])
    if pa.types.is_timestamp(t) and t.unit == "ns":
        return pa.timestamp("us", t.tz)
    return t


def spark_ready(schema: pa.Schema) -> pa.Schema:
    """`schema` with the Arrow types Spark exchanges."""
    return pa.schema([pa.field(f.name, spark_arrow_type(f.type), f.nullable) for f in schema])
