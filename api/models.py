"""Response models: the public contract in the OpenAPI document."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field

ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?")


def _iso_text(value: Any) -> Any:
    """Only ISO-8601 text is a time here (pydantic alone would also read a number as epoch
    seconds, which the OpenAPI document does not promise)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not ISO_TIME.fullmatch(value):
        raise ValueError("expected an ISO-8601 time, e.g. 2026-10-05T12:00:00Z")
    return value


IsoTime = Annotated[datetime, BeforeValidator(_iso_text)]


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
    """Every error: what is wrong and how to fix it, and the field (or rule node) at fault."""

    detail: str
    field: str | None = None
