"""Consent enforcement (default deny): which attributes of a profile a channel may see.

A channel sees an attribute of a person only when the policy lists the attribute, the channel
holds one of the attribute's purposes, and the person's consent for that purpose is in force (the
profile's `consent_<purpose>_granted`, which already says "contract holds" for contract purposes).
Everything else is withheld, with the reason and without its value. The rules are compiled once
per channel and pattern of consents, so a lookup only reads a few booleans.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
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


@dataclass(frozen=True)
class Disclosure:
    """What a channel was shown of a person and on what basis: the consent state it used, the
    legal basis on the profile, the attributes served and withheld (names only). Lookups with
    the same channel and consent state share one, so the audit log stores it once."""

    id: str  # stable across processes and restarts: a digest of everything below
    channel: str
    consent_used: dict[str, bool]  # purpose -> in force, for the purposes the channel holds
    legal_basis: dict[str, str | None]  # purpose -> basis recorded on the profile
    served: tuple[str, ...]
    withheld: tuple[Withheld, ...]

    @functools.cached_property
    def withheld_public(self) -> list[dict[str, object]]:
        """The withheld list as the API shows it (built once per disclosure)."""
        return [
            {"attribute": w.attribute, "reason": w.reason, "purposes": list(w.purposes)}
            for w in self.withheld
        ]


@dataclass(frozen=True)
class Projection:
    """What one channel may see of one profile: the values, and the disclosure behind them."""

    served: dict[str, Any]
    disclosure: Disclosure

    @property
    def withheld(self) -> tuple[Withheld, ...]:
        return self.disclosure.withheld

    @property
    def consent_used(self) -> dict[str, bool]:
        return self.disclosure.consent_used


@dataclass(frozen=True)
class ChannelRules:
    """One channel's compiled policy. Per pattern of its purposes' consents (in force or not),
    the attributes served and withheld are fixed, so a lookup reads a few booleans and picks
    its disclosure from a cache."""

    channel: str
    purposes: tuple[str, ...]
    granted_columns: tuple[str, ...]  # consent_<purpose>_granted, in `purposes` order
    basis_columns: tuple[str, ...]
    plans: dict[tuple[bool, ...], tuple[tuple[str, ...], tuple[Withheld, ...]]]
    cache: dict[tuple[tuple[bool, ...], tuple[Any, ...]], Disclosure] = field(
        default_factory=dict, compare=False, repr=False
    )

    def disclosure(self, pattern: tuple[bool, ...], basis: tuple[Any, ...]) -> Disclosure:
        found = self.cache.get((pattern, basis))
        if found is None:
            served, withheld = self.plans[pattern]
            consent = dict(zip(self.purposes, pattern, strict=True))
            bases = dict(zip(self.purposes, basis, strict=True))
            digest = repr((self.channel, consent, bases, served, withheld)).encode()
            found = Disclosure(
                hashlib.sha256(digest).hexdigest()[:32],
                self.channel,
                consent,
                bases,
                served,
                withheld,
            )
            self.cache[(pattern, basis)] = found
        return found


def _plan(
    in_force: Mapping[str, bool],
    usable: list[tuple[str, tuple[str, ...]]],
    refused: list[tuple[str, tuple[str, ...]]],
) -> tuple[tuple[str, ...], tuple[Withheld, ...]]:
    served = [KEY]
    withheld = [Withheld(a, "purpose_not_granted", ps) for a, ps in refused]
    for attribute, purposes in usable:
        if any(in_force[p] for p in purposes):
            served.append(attribute)
        else:
            withheld.append(Withheld(attribute, "no_consent", purposes))
    return tuple(served), tuple(withheld)


def compile_rules(policy: PolicyCfg) -> dict[str, ChannelRules]:
    """Per channel and pattern of consents, which attributes it sees; the rest is withheld as
    purpose_not_granted (the channel holds none of the attribute's purposes) or no_consent."""
    rules = {}
    for name, channel in policy.channels.items():
        held = tuple(channel.purposes)
        usable, refused = [], []
        for attribute, purposes in policy.attributes.items():
            mine = tuple(p for p in purposes if p in held)
            if mine:
                usable.append((attribute, mine))
            else:
                refused.append((attribute, tuple(purposes)))
        plans = {
            pattern: _plan(dict(zip(held, pattern, strict=True)), usable, refused)
            for pattern in itertools.product((False, True), repeat=len(held))
        }
        rules[name] = ChannelRules(
            name,
            held,
            tuple(f"consent_{p}_granted" for p in held),
            tuple(f"consent_{p}_legal_basis" for p in held),
            plans,
        )
    return rules


def project(profile: Mapping[str, Any], rules: ChannelRules) -> Projection:
    """The attributes of `profile` that `rules.channel` may see for this person."""
    disclosure = rules.disclosure(
        tuple(profile.get(c) is True for c in rules.granted_columns),
        tuple(profile.get(c) for c in rules.basis_columns),
    )
    return Projection({a: profile.get(a) for a in disclosure.served}, disclosure)
