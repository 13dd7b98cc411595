"""Response models: the public contract in the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class WithheldPublic(BaseModel):
    attribute: str
    reason: Literal["purpose_not_granted", "no_consent"] = Field(
        description="purpose_not_granted: the channel holds none of the attribute's purposes; "
        "no_consent: it does, but this customer's consent for them is not in force"
    )
    purposes: list[str]


class ProfilePublic(BaseModel):
    """A profile as one channel may see it."""

    person_id: str
    channel: str
    attributes: dict[str, Any] = Field(description="Only the attributes this channel may see")
    withheld: list[WithheldPublic] = Field(description="Attributes withheld, why, never values")
    consent_in_force: dict[str, bool] = Field(description="Per purpose the channel holds")
    profile_version: int
    snapshot_version: int = Field(description="The gold.profiles Delta version served from")
    last_event_ts: datetime | None = Field(description="Newest event the snapshot reflects")


class MergedPublic(BaseModel):
    person_id: str
    merged_into: str
    location: str


class ErrorPublic(BaseModel):
    detail: str
