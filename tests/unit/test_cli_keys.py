"""`cdp keys create` for stewards: a steward key names its domain (a source or consent), and only
a steward key does; the key it prints acts for that domain alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli.main import app
from pipelines.ops.keys import KeyStore

pytestmark = pytest.mark.unit


def test_a_steward_key_needs_a_known_domain(tmp_path: Path) -> None:
    env = {"CDP_DATA_ROOT": str(tmp_path), "COLUMNS": "200"}
    runner = CliRunner()
    missing = runner.invoke(app, ["keys", "create", "Steward", "--role", "steward"], env=env)
    assert missing.exit_code == 2 and "--domain" in missing.stdout
    unknown = runner.invoke(
        app, ["keys", "create", "S", "--role", "steward", "--domain", "payroll"], env=env
    )
    assert unknown.exit_code == 2 and "billing" in unknown.stdout  # names the domains there are
    stray = runner.invoke(
        app, ["keys", "create", "M", "--role", "marketing", "--domain", "billing"], env=env
    )
    assert stray.exit_code == 2

    made = runner.invoke(
        app, ["keys", "create", "CRM steward", "--role", "steward", "--domain", "crm"], env=env
    )
    assert made.exit_code == 0, made.stdout
    key = made.stdout.split()[0]
    caller = KeyStore(f"sqlite:///{tmp_path / 'ops.sqlite'}").verify(key)
    assert caller is not None and caller.stewards("crm") and not caller.stewards("billing")
