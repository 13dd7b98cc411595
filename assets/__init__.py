"""Dagster code location (`dagster dev -w workspace.yaml`): the asset graph for the settings in
conf/ and the CDP_* environment."""

from assets.definitions import build_definitions
from assets.runtime import CdpResource

defs = build_definitions(CdpResource.from_environment())
