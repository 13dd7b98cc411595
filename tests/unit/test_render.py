"""The pre-rendered lookup body serves exactly what the consent projection allows: the same
attributes with the same values, the same withheld list, for every channel, over random
policies and profiles."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import polars as pl
import pytest

from api.render import RenderedProfiles
from pipelines.profile.consent import compile_rules, project
from tests.unit.test_consent import SHIPPED, _profile, _random_policy

pytestmark = pytest.mark.unit


def _frame(rng: random.Random, policy: object, n: int) -> pl.DataFrame:
    rows = []
    for i in range(n):
        row = _profile(rng, policy)  # type: ignore[arg-type]
        row["profile_version"] = i + 1
        row["last_event_ts"] = datetime(2026, 10, 1, tzinfo=UTC)
        rows.append(row)
    return pl.DataFrame(rows)


@pytest.mark.parametrize("seed", range(40))
def test_rendered_bodies_equal_the_projection(seed: int) -> None:
    rng = random.Random(seed)
    policy = SHIPPED if seed == 0 else _random_policy(rng)
    frame = _frame(rng, policy, 30)
    rendered = RenderedProfiles(frame, policy, version=9)
    for name, rules in compile_rules(policy).items():
        for i, row in enumerate(frame.iter_rows(named=True)):
            body, disclosure = rendered.body(i, rules)
            doc = json.loads(body)
            expected = project(row, rules)
            served = {
                k: v.isoformat() if isinstance(v, datetime) else v
                for k, v in expected.served.items()
            }
            assert doc["attributes"] == served, name  # times as RFC 3339
            assert "secret_not_in_policy" not in doc["attributes"]
            assert doc["withheld"] == disclosure.withheld_public
            assert disclosure == expected.disclosure
            assert doc["consent_in_force"] == expected.consent_used
            assert (doc["person_id"], doc["channel"]) == (row["person_id"], name)
            assert (doc["profile_version"], doc["snapshot_version"]) == (i + 1, 9)
