"""What the unit tests share: a copy of the project's conf/ to change."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """The project's conf/ copied under tmp_path (a test edits its copy)."""
    target = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", target)
    return target
