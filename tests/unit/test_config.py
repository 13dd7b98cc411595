"""A broken config fails at start-up naming the file, the key and what is wrong; the
environment overrides paths."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT, ConfigError, load_settings

pytestmark = pytest.mark.unit


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    target = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", target)
    return target


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
    with pytest.raises(ConfigError, match=r"policy\.yaml[\s\S]*open_kases"):
        load_settings(conf, env={})
