"""`cdp --version` prints the version pyproject.toml gives the package (what an operator quotes
in a support ticket)."""

from __future__ import annotations

import tomllib

from typer.testing import CliRunner

from pipelines.cli.main import app
from pipelines.config import PROJECT_ROOT


def test_cdp_version_is_the_package_version() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"cdp {project['version']}"
