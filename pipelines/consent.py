"""Consent enforcement (default deny): which attributes of a profile a channel may see.

A channel sees an attribute of a person only when the policy lists the attribute, the channel
holds one of the attribute's purposes, and the person's consent for that purpose is in force (the
profile's `consent_<purpose>_granted`, which already says "contract holds" for contract purposes).
Everything else is withheld, with the reason and without its value. The rules are compiled once
per channel, so a lookup only reads a few booleans.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.config import PolicyCfg

KEY = "person_id"


@dataclass(frozen=True)
class Withheld:
    attribute: str
    reason: str  # purpose_not_granted | no_consent
    purposes: tuple[str, ...]  # the attribute's purposes (not granted to the channel / no consent)


@dataclass
class Projection:
    """What one channel may see of one profile, and why the rest is withheld."""

    served: dict[str, Any]
    withheld: list[Withheld]
    consent_used: dict[str, bool]  # purpose -> in force, for the purposes this channel holds
    legal_basis: dict[str, str | None] = field(default_factory=dict)  # purpose -> basis used


@dataclass(frozen=True)
class ChannelRules:
    """One channel's compiled policy: per listed attribute, the purposes it may use it for."""

    channel: str
    purposes: tuple[str, ...]
    usable: tuple[tuple[str, tuple[str, ...]], ...]  # (attribute, purposes held by the channel)
    refused: tuple[tuple[str, tuple[str, ...]], ...]  # attributes whose purposes it lacks


def compile_rules(policy: PolicyCfg) -> dict[str, ChannelRules]:
    """Per channel, which attributes it could see (and under which purposes) and which never."""
    rules = {}
    for name, channel in policy.channels.items():
        held = set(channel.purposes)
        usable, refused = [], []
        for attribute, purposes in policy.attributes.items():
            mine = tuple(p for p in purposes if p in held)
            if mine:
                usable.append((attribute, mine))
            else:
                refused.append((attribute, tuple(purposes)))
        rules[name] = ChannelRules(name, tuple(channel.purposes), tuple(usable), tuple(refused))
    return rules


def project(profile: Mapping[str, Any], rules: ChannelRules) -> Projection:
    """The attributes of `profile` that `rules.channel` may see for this person."""
    in_force = {p: profile.get(f"consent_{p}_granted") is True for p in rules.purposes}
    served: dict[str, Any] = {KEY: profile[KEY]}
    withheld = [Withheld(a, "purpose_not_granted", ps) for a, ps in rules.refused]
    for attribute, purposes in rules.usable:
        if any(in_force[p] for p in purposes):
            served[attribute] = profile.get(attribute)
        else:
            withheld.append(Withheld(attribute, "no_consent", purposes))
    basis = {p: profile.get(f"consent_{p}_legal_basis") for p in rules.purposes}
    return Projection(served, withheld, in_force, basis)
