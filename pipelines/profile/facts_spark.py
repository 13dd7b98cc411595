"""The Spark forms of `facts.py`'s steps that gold runs on the executors: the silver events
in one frame, their anchor identifier, and the latest fact per key."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipelines.config import ProfileCfg
from pipelines.lakehouse.tagged import spark_schema
from pipelines.profile.facts import EVENT_SCHEMA


def events_spark(spark: SparkSession, frames: list[DataFrame]) -> DataFrame:
    """Rows of several silver tables (Spark frames) as one frame of EVENT_SCHEMA."""
    fields = spark_schema(EVENT_SCHEMA).fields
    parts = [
        frame.select(
            *[
                (F.col(f.name) if f.name in frame.columns else F.lit(None))
                .cast(f.dataType)
                .alias(f.name)
                for f in fields
            ]
        )
        for frame in frames
    ]
    if not parts:
        return spark.createDataFrame([], spark_schema(EVENT_SCHEMA))
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def anchor_columns(cfg: ProfileCfg) -> tuple[Column, Column]:
    """The anchor's type and value of an event, as Spark columns (what `anchored` gives)."""
    kind: Column | None = None
    value: Column | None = None
    for source, fields in cfg.anchors.items():
        is_source = F.col("source") == source
        first_type = F.coalesce(*[F.when(F.col(f).isNotNull(), F.lit(f)) for f in fields])
        first_value = F.coalesce(*[F.col(f) for f in fields])
        kind = F.when(is_source, first_type) if kind is None else kind.when(is_source, first_type)
        value = (
            F.when(is_source, first_value) if value is None else value.when(is_source, first_value)
        )
    none = F.lit(None).cast("string")
    return (none if kind is None else kind), (none if value is None else value)


def latest_spark(facts: DataFrame) -> DataFrame:
    """`latest` of a Spark frame of facts."""
    newest = Window.partitionBy("fact_key").orderBy(
        F.col("ts").desc_nulls_last(), F.col("event_id").desc_nulls_last()
    )
    return (
        facts.withColumn("_rank", F.row_number().over(newest))
        .where(F.col("_rank") == 1)
        .drop("_rank")
    )
