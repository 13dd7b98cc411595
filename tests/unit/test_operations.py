"""Operational guard rails: one process per stage, a clear word when Java is missing, a CLI
that explains itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.lakehouse.locks import StageBusyError, stage_lock
from pipelines.lakehouse.spark import JavaMissingError, check_java

pytestmark = pytest.mark.unit


def test_second_holder_of_a_stage_gets_a_clear_message(tmp_path: Path) -> None:
    with stage_lock(tmp_path, "ingest.billing"):
        with (
            pytest.raises(
                StageBusyError, match=rf"ingest\.billing is already running.*\(pid {os.getpid()}\)"
            ),
            stage_lock(tmp_path, "ingest.billing"),
        ):
            pass
        with stage_lock(tmp_path, "ingest.crm"):  # other stages are independent
            pass
    with stage_lock(tmp_path, "ingest.billing"):  # released after use
        pass


def test_missing_java_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaMissingError, match="openjdk-17-jre-headless"):
        check_java()


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for command in ("generate", "run", "stream", "summary"):
        assert command in out


def test_broken_config_exits_with_the_key(tmp_path: Path) -> None:
    import shutil

    from pipelines.config import PROJECT_ROOT

    shutil.copytree(PROJECT_ROOT / "conf", tmp_path / "conf")
    engine = tmp_path / "conf" / "engine.yaml"
    engine.write_text(engine.read_text().replace("trigger_interval_s: 2", "trigger_interval_s: -1"))
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", "run", "--conf", str(tmp_path / "conf")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "trigger_interval_s" in result.stdout and "engine.yaml" in result.stdout


def test_files_no_query_would_read_are_reported(tmp_path: Path) -> None:
    from pipelines.ingest.stream import landing_warnings

    (tmp_path / "billing").mkdir()
    (tmp_path / "billing" / "b-1.jsonl").write_text("{}\n")
    (tmp_path / "billing" / "b-2.csv").write_text("a,b\n")
    (tmp_path / "billing" / ".b-3.jsonl.tmp").write_text("{}\n")  # still being written
    (tmp_path / "roaming").mkdir()
    (tmp_path / "reference").mkdir()
    warnings = landing_warnings(tmp_path, ["billing", "crm"])
    assert len(warnings) == 2
    assert "b-2.csv" in warnings[0] and "rename them to .jsonl" in warnings[0]
    assert "no contract for source 'roaming'" in warnings[1]
