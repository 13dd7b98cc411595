"""docs/config.md is the reference `cdp config reference` prints from the config models: a key
added, renamed or re-documented in pipelines/config.py without regenerating it fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.config import PROJECT_ROOT

pytestmark = pytest.mark.unit


def test_the_reference_in_docs_is_what_the_models_say() -> None:
    cdp = Path(sys.executable).parent / "cdp"
    printed = subprocess.run(
        [str(cdp), "config", "reference"], capture_output=True, text=True, check=True
    ).stdout
    assert printed == (PROJECT_ROOT / "docs" / "config.md").read_text(), (
        "docs/config.md is out of date: run `cdp config reference > docs/config.md`"
    )


def test_every_key_the_shipped_conf_sets_is_in_the_reference() -> None:
    documented = (PROJECT_ROOT / "docs" / "config.md").read_text()
    missing = []
    for name in ("engine", "api", "sla", "profile", "identity", "scores"):
        raw = yaml.safe_load((PROJECT_ROOT / "conf" / f"{name}.yaml").read_text()) or {}
        for top, value in raw.items():
            # engine.yaml's keys are sections (engine, paths, source) of their own
            keys = [f"{top}.{k}" for k in value] if name == "engine" else [top]
            missing += [f"{name}.yaml: {k}" for k in keys if f"`{k}`" not in documented]
    assert not missing, missing
