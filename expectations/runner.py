"""Runs the suites with Great Expectations and builds the data docs.

The GX project lives next to the lake (`<data root>/quality/gx`): suites, validation results
and the static data-docs site stewards open. Suites are rewritten from code on every start, so
the code in `expectations.suites` is the only definition.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.core.expectation_validation_result import (
    ExpectationSuiteValidationResult,
)
from great_expectations.data_context.types.base import ProgressBarsConfig

from expectations.frames import frame_for
from expectations.suites import Suite, all_suites
from expectations.vendor import localise
from pipelines.config import Settings
from pipelines.lakehouse.lake import Lake

log = logging.getLogger(__name__)
EXAMPLES = 5  # unexpected values shown per failed expectation
TARIFFS = "ref.tariffs"


@dataclass(frozen=True)
class Failure:
    """One failed expectation: what it checks, on how many rows, with a few of the values."""

    table: str
    expectation: str  # e.g. expect_column_values_to_be_between(bytes_up)
    why: str
    blocking: bool
    unexpected: int
    rows: int
    examples: list[Any]
    subjects: list[str] = field(default_factory=list)  # the suite's row keys that failed

    def __str__(self) -> str:
        shown = ", ".join(repr(_plain(x)) for x in self.examples)
        more = len(self.subjects) - 5
        whose = (
            f", for {', '.join(self.subjects[:5])}{f' and {more:,} more' if more > 0 else ''}"
            if self.subjects
            else ""
        )
        return (
            f"{self.table}: {self.expectation} failed on {self.unexpected:,} of {self.rows:,} "
            f"rows{whose} ({self.why}){f'; e.g. {shown}' if shown else ''}"
        )


def _plain(value: Any) -> Any:
    """An example value as a reader expects it: 0.05, not np.float64(0.05)."""
    if isinstance(value, tuple | list):
        return type(value)(_plain(v) for v in value)
    return value.item() if hasattr(value, "item") and callable(value.item) else value


@dataclass
class Outcome:
    """One suite run on one table."""

    table: str
    rows: int
    evaluated: int = 0
    failures: list[Failure] = field(default_factory=list)
    skipped: str | None = None  # why nothing was validated (table missing, nothing pending)

    @property
    def blocking(self) -> list[Failure]:
        return [f for f in self.failures if f.blocking]

    @property
    def passed(self) -> bool:
        return not self.blocking


def _name(config: Any) -> str:
    kwargs = config.kwargs
    cols = (
        kwargs.get("column")
        or kwargs.get("column_list")
        or [
            kwargs.get("column_A"),
            kwargs.get("column_B"),
        ]
    )
    if isinstance(cols, list):
        cols = ", ".join(str(c) for c in cols)
    return f"{config.type}({cols})"


def outcome_of(
    table: str, rows: int, result: ExpectationSuiteValidationResult, row_key: str | None = None
) -> Outcome:
    out = Outcome(table, rows, evaluated=len(result.results))
    for r in result.results:
        if r.success:
            continue
        config = r.expectation_config
        assert config is not None
        meta = config.meta or {}
        res = r.result or {}
        error = (r.exception_info or {}).get("exception_message")
        out.failures.append(
            Failure(
                table=table,
                expectation=_name(config),
                why=str(meta.get("why", "")) + (f" [error: {error}]" if error else ""),
                blocking=bool(meta.get("blocking", False)),
                unexpected=int(res.get("unexpected_count") or (rows if error else 0)),
                rows=rows,
                examples=list(res.get("partial_unexpected_list") or [])[:EXAMPLES],
                subjects=sorted(
                    {
                        str(i[row_key])
                        for i in res.get("partial_unexpected_index_list") or []
                        if isinstance(i, dict) and row_key in i
                    }
                )
                if row_key
                else [],
            )
        )
    return out


class Quality:
    """The GX project of one data root: suites from code, validations, data docs."""

    def __init__(self, settings: Settings, lake: Lake | None = None) -> None:
        self.settings = settings
        self.lake = lake or Lake(settings.paths.lake_root)
        self.root = settings.paths.lake_root.parent / "quality"
        self.root.mkdir(parents=True, exist_ok=True)
        self.context = gx.get_context(mode="file", project_root_dir=str(self.root))
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.context.variables.save()
        self.source = self.context.data_sources.add_or_update_pandas("lake")

    @property
    def suites(self) -> dict[str, Suite]:
        """Every suite, built now: value sets taken from reference tables are current."""
        tariffs: list[str] = []
        if self.lake.exists(TARIFFS):
            tariffs = self.lake.read_polars(TARIFFS, ["tariff_id"])["tariff_id"].to_list()
        return all_suites(self.settings, tariffs)

    def _save(self, suite: Suite) -> gx.ExpectationSuite:
        return self.context.suites.add_or_update(
            gx.ExpectationSuite(
                name=suite.table,
                expectations=list(suite.expectations),
                meta={"notes": suite.description},
            )
        )

    def _checkpoint(self, suite: Suite) -> gx.Checkpoint:
        try:
            asset = self.source.get_asset(suite.table)
        except LookupError:
            asset = self.source.add_dataframe_asset(name=suite.table)
        try:
            batch = asset.get_batch_definition("rows")
        except (KeyError, LookupError):
            batch = asset.add_batch_definition_whole_dataframe("rows")
        gx_suite = self._save(suite)
        definition = self.context.validation_definitions.add_or_update(
            gx.ValidationDefinition(data=batch, suite=gx_suite, name=suite.table)
        )
        return self.context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=suite.table,
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="data_docs")],
                result_format=self._result_format(suite),
            )
        )

    def _result_format(self, suite: Suite) -> dict[str, Any]:
        if suite.row_key is None:
            return {"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES}
        # Every failing row's key is wanted (one row per source), not just a few examples.
        return {
            "result_format": "SUMMARY",
            "partial_unexpected_count": max(EXAMPLES, len(self.settings.sources)),
            "unexpected_index_column_names": [suite.row_key],
        }

    def validate_frame(self, suite: Suite, frame: pd.DataFrame) -> Outcome:
        """Run `suite` on `frame` (stored as a validation result in the data docs)."""
        if frame.empty:
            return Outcome(suite.table, 0, skipped="no rows to validate")
        run = self._checkpoint(suite).run(batch_parameters={"dataframe": frame})
        (result,) = run.run_results.values()
        return outcome_of(suite.table, len(frame), result, suite.row_key)

    def validate(self, table: str, until: dict[str, int] | None = None) -> Outcome:
        """Run `table`'s suite on the rows it covers now (see `expectations.frames`; silver
        tables up to `until`'s version)."""
        suite = self.suites[table]
        frame = frame_for(self.lake, self.settings, suite, until)
        if frame is None:
            return Outcome(table, 0, skipped="table does not exist yet")
        return self.validate_frame(suite, frame)

    def docs(self) -> Path:
        """Build the data docs site (every suite, validated or not yet); returns its index.html."""
        for suite in self.suites.values():
            self._save(suite)
        self.context.build_data_docs()
        (site,) = self.context.get_docs_sites_urls()
        index = Path(str(site["site_url"]).removeprefix("file://"))
        localise(index.parent)
        return index
