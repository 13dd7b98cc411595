"""Serving bases are found by the versions in their folder names, including a table that did
not exist yet (-1), and only under the policy they were rendered with."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.base import SERVING_DIR, Versions, newest_base_versions
from api.render import fingerprint
from pipelines.lakehouse.reader import LakeReader
from tests.unit.test_consent import SHIPPED, _random_policy

pytestmark = pytest.mark.unit


def test_the_newest_usable_base_is_found_by_its_versions(tmp_path: Path) -> None:
    import random

    other = _random_policy(random.Random(3))
    serving = tmp_path / SERVING_DIR
    for name in (
        Versions(3, 2, -1).name(SHIPPED),  # no merges table yet
        Versions(5, 4, 0).name(SHIPPED),
        Versions(9, 9, 9).name(other),  # another policy's rendering
    ):
        (serving / name).mkdir(parents=True)
    (serving / f"base-x-1-1-{fingerprint(SHIPPED)}").mkdir()  # not a base
    lake = LakeReader(tmp_path)
    assert newest_base_versions(lake, SHIPPED, Versions(10, 10, 10)) == Versions(5, 4, 0)
    assert newest_base_versions(lake, SHIPPED, Versions(4, 9, 9)) == Versions(3, 2, -1)
    assert newest_base_versions(lake, SHIPPED, Versions(2, 9, 9)) is None
