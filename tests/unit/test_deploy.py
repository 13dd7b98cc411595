"""The container set-up: compose.yaml is a valid Compose file (checked against the schema
`docker compose` validates with, fetched at install), starts every long-running part with the
settings they need, and the image runs as a user without rights. No Docker engine runs here:
`docker build` and `docker compose up` are documented in docs/operations.md."""

from __future__ import annotations

import json

import pytest
import yaml
from jsonschema import Draft202012Validator

from pipelines.config import PROJECT_ROOT

pytestmark = pytest.mark.unit

SCHEMA = PROJECT_ROOT / ".vendor" / "compose-spec.json"


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((PROJECT_ROOT / "compose.yaml").read_text())


def test_the_compose_file_is_valid_compose() -> None:
    assert SCHEMA.exists(), "run `make install` (fetches the Compose schema)"
    validator = Draft202012Validator(json.loads(SCHEMA.read_text()))
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(_compose())
    ]
    assert not errors, errors
    # the schema refuses what compose refuses: a typo in a key fails here too
    broken = _compose()
    broken["services"]["api"]["portz"] = ["8000:8000"]
    assert not validator.is_valid(broken)


def test_it_starts_every_long_running_part_with_their_settings() -> None:
    services = _compose()["services"]
    assert {"stream", "api", "dagster", "postgres", "kafka"} <= set(services)
    commands = {name: s.get("command") or s.get("entrypoint") for name, s in services.items()}
    assert commands["stream"] == ["stream"] and commands["api"][0] == "serve"
    assert "cdp db upgrade" in commands["init"][-1] and "cdp kafka init" in commands["init"][-1]
    assert commands["dagster"][:2] == ["dagster", "dev"]
    for name in ("stream", "api", "dagster", "init"):
        env = services[name]["environment"]
        assert env["CDP_API_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert env["CDP_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert "data:/data" in services[name]["volumes"]  # one data root for all of them


def test_the_image_is_multi_stage_and_runs_without_rights() -> None:
    lines = (PROJECT_ROOT / "Dockerfile").read_text().splitlines()
    stages = [x for x in lines if x.startswith("FROM ")]
    assert len(stages) == 2 and "AS build" in stages[0]
    users = [x.split()[1] for x in lines if x.startswith("USER ")]
    assert users == ["cdp"]
    assert any("make install" in x for x in lines)  # the pinned jars and packages, not ad hoc
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".jvm", "data"} <= set(ignored)
