"""Dagster code location (`dagster dev -w workspace.yaml`): the asset graph for the settings in
conf/ and the CDP_* environment."""

from assets.definitions import build_definitions
from pipelines.config import load_settings

defs = build_definitions(load_settings())
