"""A broken config fails at start-up naming the file, the key and what is wrong; the
environment overrides paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli.main import app
from pipelines.config import PROJECT_ROOT, ConfigError, load_settings
from pipelines.profile.build import check_policy

pytestmark = pytest.mark.unit


def test_shipped_config_loads_with_all_sources(conf: Path) -> None:
    settings = load_settings(conf, env={})
    assert settings.sources == ["app", "billing", "crm", "network"]
    assert settings.contract("billing").steward.email.endswith("@operator.example")
    assert "amount" in settings.contract("billing").silver_fields()


def test_wrong_type_names_file_and_key(conf: Path) -> None:
    path = conf / "engine.yaml"
    path.write_text(path.read_text().replace("shuffle_partitions: 4", "shuffle_partitions: lots"))
    with pytest.raises(ConfigError) as err:
        load_settings(conf, env={})
    assert "engine.yaml" in str(err.value)
    assert "shuffle_partitions" in str(err.value)


def test_unknown_key_is_refused(conf: Path) -> None:
    path = conf / "engine.yaml"
    path.write_text(path.read_text().replace("ui_enabled: false", "ui_enabled: false\n  uii: 1"))
    with pytest.raises(ConfigError, match=r"engine\.yaml[\s\S]*uii"):
        load_settings(conf, env={})


def test_contract_type_conflict_names_version_event_and_field(conf: Path) -> None:
    path = conf / "contracts" / "network.yaml"
    text = path.read_text().replace(
        "bytes_up: {type: integer, required: true}",
        "bytes_up: {type: integer, required: true}\n          region: {type: integer}",
    )
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(conf, env={})
    assert "network.yaml" in str(err.value) and "region" in str(err.value)


def test_enum_without_values_is_refused(conf: Path) -> None:
    path = conf / "contracts" / "app.yaml"
    path.write_text(
        path.read_text().replace(
            "platform: {type: enum, values: [android, ios, web], required: true}",
            "platform: {type: enum, required: true}",
            1,
        )
    )
    with pytest.raises(ConfigError, match="enum field needs"):
        load_settings(conf, env={})


def test_broken_yaml_names_file(conf: Path) -> None:
    (conf / "identity.yaml").write_text("country: [unclosed\n")
    with pytest.raises(ConfigError, match=r"identity\.yaml: not valid YAML"):
        load_settings(conf, env={})


def test_environment_overrides_paths_and_expands_variables(conf: Path, tmp_path: Path) -> None:
    path = conf / "engine.yaml"
    path.write_text(path.read_text().replace("driver_memory: 4g", "driver_memory: ${CDP_TEST_MEM}"))
    import os

    os.environ["CDP_TEST_MEM"] = "3g"
    try:
        settings = load_settings(
            conf, env={"CDP_DATA_ROOT": str(tmp_path / "d"), "CDP_LAKE_ROOT": str(tmp_path / "L")}
        )
    finally:
        del os.environ["CDP_TEST_MEM"]
    assert settings.engine.driver_memory == "3g"
    assert settings.paths.lake_root == tmp_path / "L"
    assert settings.paths.landing_root == tmp_path / "d" / "landing"
    assert settings.paths.checkpoint_root == tmp_path / "d" / "checkpoints"


def test_policy_attribute_that_is_no_profile_column_is_refused(conf: Path) -> None:
    path = conf / "policy.yaml"
    path.write_text(path.read_text().replace("  open_cases: [service]", "  open_kases: [service]"))
    settings = load_settings(conf, env={})  # conf alone cannot know the profile's columns
    with pytest.raises(ConfigError, match=r"policy\.yaml[\s\S]*open_kases"):
        check_policy(settings)  # every entry point runs this (CLI, API, Dagster)
    refused = CliRunner().invoke(app, ["contracts", "status", "--conf", str(conf)])
    assert refused.exit_code == 2 and "open_kases" in refused.output


def test_the_api_loads_no_jvm_client() -> None:
    """Serving needs no Spark: the API's import graph stays out of PySpark and delta-spark
    (import-linter checks the static graph in `make test`; this checks what Python loads)."""
    probe = (
        "import sys, api.main, api.server; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyspark', 'delta')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    )
    assert done.stdout.strip() == "[]", done.stdout
