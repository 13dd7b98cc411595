"""Default deny: a channel sees an attribute only when the policy lists it, the channel holds one
of its purposes and the person's consent for that purpose is in force; everything else is
withheld with its reason and never with its value. Checked over many random profiles, for the
shipped policy and for random policies."""

from __future__ import annotations

import random

import pytest

from pipelines.config import PROJECT_ROOT, PolicyCfg, load_settings
from pipelines.profile.consent import KEY, compile_rules, project

pytestmark = pytest.mark.unit

SHIPPED = load_settings(PROJECT_ROOT / "conf", env={}).policy


def _profile(rng: random.Random, policy: PolicyCfg) -> dict[str, object]:
    row: dict[str, object] = {KEY: f"P{rng.getrandbits(40):010x}"}
    for attribute in policy.attributes:
        row[attribute] = f"value-of-{attribute}-{rng.random()}"
    row["secret_not_in_policy"] = "must never be served"
    for purpose, spec in policy.purposes.items():
        row[f"consent_{purpose}_granted"] = rng.choice([True, False, None])
        row[f"consent_{purpose}_legal_basis"] = spec.legal_basis
    return row


def _random_policy(rng: random.Random) -> PolicyCfg:
    purposes = [f"p{i}" for i in range(rng.randint(1, 5))]
    return PolicyCfg.model_validate(
        {
            "purposes": {p: {"legal_basis": rng.choice(["consent", "contract"])} for p in purposes},
            "attributes": {
                f"a{i}": rng.sample(purposes, rng.randint(1, len(purposes)))
                for i in range(rng.randint(1, 12))
            },
            "channels": {
                f"c{i}": {"purposes": rng.sample(purposes, rng.randint(0, len(purposes)))}
                for i in range(rng.randint(1, 4))
            },
        }
    )


def _check(policy: PolicyCfg, profile: dict[str, object]) -> None:
    for name, rules in compile_rules(policy).items():
        held = set(policy.channels[name].purposes)
        got = project(profile, rules)
        assert "secret_not_in_policy" not in got.served
        assert set(got.served) | {w.attribute for w in got.withheld} == {KEY, *policy.attributes}
        for attribute, value in got.served.items():
            if attribute == KEY:
                continue
            allowed = [p for p in policy.attributes[attribute] if p in held]
            assert any(profile[f"consent_{p}_granted"] is True for p in allowed), (name, attribute)
            assert value == profile[attribute]
        for w in got.withheld:
            assert w.attribute not in got.served
            allowed = [p for p in policy.attributes[w.attribute] if p in held]
            if w.reason == "purpose_not_granted":
                assert not allowed
            else:
                assert w.reason == "no_consent" and allowed
                assert not any(profile[f"consent_{p}_granted"] is True for p in allowed)


def test_shipped_policy_never_serves_without_purpose_and_consent() -> None:
    rng = random.Random(1)
    for _ in range(300):
        _check(SHIPPED, _profile(rng, SHIPPED))


def test_random_policies_never_serve_without_purpose_and_consent() -> None:
    rng = random.Random(2)
    for _ in range(200):
        policy = _random_policy(rng)
        for _ in range(10):
            _check(policy, _profile(rng, policy))


def test_withdrawal_hides_marketing_attributes_from_a_campaign_channel() -> None:
    rules = compile_rules(SHIPPED)["sms_campaigns"]
    profile = _profile(random.Random(3), SHIPPED)
    profile["consent_marketing_granted"] = True
    assert "primary_msisdn" in project(profile, rules).served
    profile["consent_marketing_granted"] = False
    got = project(profile, rules)
    assert "primary_msisdn" not in got.served
    assert {w.reason for w in got.withheld if w.attribute == "primary_msisdn"} == {"no_consent"}
    assert got.consent_used == {"marketing": False}


def test_a_policy_naming_an_unknown_purpose_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown purpose"):
        PolicyCfg.model_validate(
            {"purposes": {"service": {"legal_basis": "contract"}}, "attributes": {"x": ["ads"]}}
        )
