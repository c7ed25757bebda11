"""safety.json as a Bedrock guardrail: the mapping (weightshift/bundles/guardrail.py), checked
against botocore's model of the API, and the BundleGuardrail component under Pulumi mocks."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore
import pulumi
import pytest
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import SETTINGS

from components.guardrail import (
    BundleGuardrail,
    BundleGuardrailArgs,
    apply_guardrail_policy,
    version_description,
)
from weightshift.bundles import guardrail as g
from weightshift.bundles.schemas import Safety
from weightshift.preview.synth import OFFLINE_ACCOUNT, mocked_state

PROJECT = Path(__file__).resolve().parent.parent
EXAMPLE = PROJECT / "bundles" / "support-assistant" / "v1.5.0" / "config" / "safety.json"
GUARDRAIL = "aws:bedrock/guardrail:Guardrail"
VERSION = "aws:bedrock/guardrailVersion:GuardrailVersion"

REGISTERED: dict[str, dict[str, Any]] = {}


class Mocks(pulumi.runtime.Mocks):
    """Records every registration's inputs; answers with ``mocked_state`` plus the ids Bedrock
    would report."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        REGISTERED[f"{args.typ}::{args.name}"] = args.inputs
        resource_id, state = mocked_state(args.typ, args.name, args.inputs, "eu-west-1", "aws")
        if args.typ == GUARDRAIL:
            guardrail_id = hashlib.sha256(args.name.encode()).hexdigest()[:12]
            arn = f"arn:aws:bedrock:eu-west-1:{OFFLINE_ACCOUNT}:guardrail/{guardrail_id}"
            state.update(guardrailId=guardrail_id, guardrailArn=arn, version="DRAFT")
            resource_id = guardrail_id
        elif args.typ == VERSION:
            state.update(version="1")
        return resource_id, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], None]:
        raise AssertionError(f"unexpected invoke {args.token}")


@pytest.fixture(autouse=True)
def guardrail_mocks() -> Iterator[None]:
    """Pulumi's mocks are one per process, and tests/test_components.py installs its own when
    imported: these are installed for each test here and the previous ones put back after, so
    both modules pass in one run whatever the order."""
    monitor = SETTINGS.monitor
    previous = monitor if isinstance(monitor, MockMonitor) else None
    dry_run = SETTINGS.dry_run
    pulumi.runtime.set_mocks(Mocks(), preview=False)
    yield
    if previous is not None:
        pulumi.runtime.set_mocks(previous.mocks, preview=dry_run, monitor=previous)


def example() -> Safety:
    return Safety.model_validate_json(EXAMPLE.read_text())


def safety(**changes: Any) -> Safety:
    values: dict[str, Any] = {"blocked_categories": ["violence"], "refusal_message": "No."}
    values.update(changes)
    return Safety.model_validate(values)


def config(value: Safety) -> g.GuardrailConfig:
    mapped = g.guardrail_config(value)
    assert mapped is not None
    return mapped


def filters(mapped: g.GuardrailConfig) -> dict[str, dict[str, Any]]:
    assert mapped.content_policy_config is not None
    return {f["type"]: f for f in mapped.content_policy_config["filters_configs"]}


def botocore_shapes() -> dict[str, Any]:
    (path,) = Path(botocore.__file__).parent.glob("data/bedrock/*/service-2.json*")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as file:
        shapes: dict[str, Any] = json.load(file)["shapes"]
    return shapes


# -- the mapping -----------------------------------------------------------------------------


def test_example_bundle_becomes_filters_topics_and_pii() -> None:
    mapped = config(example())
    assert mapped.blocked_input_messaging == "Sorry, I can't help with that."
    assert mapped.blocked_outputs_messaging == mapped.blocked_input_messaging
    # violence -> VIOLENCE; sexual-minors -> SEXUAL plus a topic; max_toxicity 0.05 -> HIGH.
    assert filters(mapped) == {
        kind: {
            "type": kind,
            "input_strength": "HIGH",
            "output_strength": "HIGH",
            "input_enabled": True,
            "output_enabled": True,
        }
        for kind in ("SEXUAL", "VIOLENCE")
    }
    assert mapped.topic_policy_config is not None
    topics = {t["name"]: t for t in mapped.topic_policy_config["topics_configs"]}
    assert set(topics) == {"Self-harm", "Sexual content involving minors"}
    assert topics["Self-harm"]["definition"] == (
        "Content that encourages, instructs or glorifies suicide or self-injury."
    )
    assert all(t["type"] == "DENY" and t["examples"] for t in topics.values())
    assert mapped.word_policy_config is None
    assert mapped.sensitive_information_policy_config is not None
    entities = mapped.sensitive_information_policy_config["pii_entities_configs"]
    assert [e["type"] for e in entities] == list(g.PII_ENTITIES)
    assert {e["action"] for e in entities} == {"ANONYMIZE"}


@pytest.mark.parametrize(
    ("toxicity", "expected"),
    [(0.0, "HIGH"), (0.05, "HIGH"), (0.0501, "MEDIUM"), (0.2, "MEDIUM"), (0.21, "LOW"), (1, "LOW")],
)
def test_strength_follows_max_toxicity(toxicity: float, expected: str) -> None:
    assert g.strength(toxicity) == expected
    mapped = config(safety(max_toxicity=toxicity))
    assert filters(mapped)["VIOLENCE"]["input_strength"] == expected
    assert filters(mapped)["VIOLENCE"]["output_strength"] == expected


def test_prompt_attack_filters_input_only() -> None:
    attack = filters(config(safety(blocked_categories=["prompt-attack"])))["PROMPT_ATTACK"]
    assert attack["output_strength"] == "NONE"
    assert attack["input_strength"] == "HIGH"
    no_input = config(safety(input_moderation=False, blocked_categories=["prompt-attack", "hate"]))
    assert set(filters(no_input)) == {"HATE"}


def test_one_sided_moderation_disables_the_other_side() -> None:
    mapped = config(safety(output_moderation=False, blocked_terms=["foo"]))
    assert filters(mapped)["VIOLENCE"]["output_enabled"] is False
    assert filters(mapped)["VIOLENCE"]["input_enabled"] is True
    assert mapped.word_policy_config is not None
    (word,) = mapped.word_policy_config["words_configs"]
    assert (word["input_enabled"], word["output_enabled"]) == (True, False)


def test_category_names_are_case_and_separator_insensitive() -> None:
    mapped = config(safety(blocked_categories=["Self_Harm", "PROMPT ATTACK", "Sexual", "sexual"]))
    assert set(filters(mapped)) == {"PROMPT_ATTACK", "SEXUAL"}
    assert mapped.topic_policy_config is not None
    assert [t["name"] for t in mapped.topic_policy_config["topics_configs"]] == ["Self-harm"]


def test_unknown_category_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(g.GuardrailError) as error:
        g.guardrail_config(safety(blocked_categories=["violence", "gambling"]))
    text = str(error.value)
    assert "'gambling'" in text
    assert all(known in text for known in g.CATEGORIES)


def test_terms_become_blocked_words_once_each() -> None:
    mapped = config(safety(blocked_terms=[" zeta ", "Alpha", "alpha", "beta phrase"]))
    assert mapped.word_policy_config is not None
    words = mapped.word_policy_config["words_configs"]
    assert [w["text"] for w in words] == ["Alpha", "beta phrase", "zeta"]
    assert {(w["input_action"], w["output_action"]) for w in words} == {("BLOCK", "BLOCK")}


def test_word_limits() -> None:
    assert config(safety(blocked_terms=["x" * g.WORD_MAX]))
    with pytest.raises(g.GuardrailError, match=r"blocked_terms\[1\]: 101 characters.*at most 100"):
        g.guardrail_config(safety(blocked_terms=["ok", "x" * (g.WORD_MAX + 1)]))
    with pytest.raises(g.GuardrailError, match=r"blocked_terms\[0\]: empty"):
        g.guardrail_config(safety(blocked_terms=["  "]))
    many = safety().model_copy(update={"blocked_terms": [f"t{i}" for i in range(g.WORDS_MAX + 1)]})
    with pytest.raises(g.GuardrailError, match=r"10001 distinct terms.*at most 10000"):
        g.guardrail_config(many)


def test_refusal_message_limit() -> None:
    assert config(safety(refusal_message="x" * g.MESSAGING_MAX))
    with pytest.raises(g.GuardrailError, match=r"refusal_message: 501 characters.*1\.\.500"):
        g.guardrail_config(safety(refusal_message="x" * (g.MESSAGING_MAX + 1)))


def test_pii_redaction_off_declares_no_sensitive_information_policy() -> None:
    assert config(safety(pii_redaction=False)).sensitive_information_policy_config is None


def test_no_moderation_needs_no_guardrail() -> None:
    assert g.guardrail_config(safety(input_moderation=False, output_moderation=False)) is None


def test_moderation_with_nothing_to_check_is_refused() -> None:
    with pytest.raises(g.GuardrailError, match="let everything through"):
        g.guardrail_config(safety(blocked_categories=[], pii_redaction=False))


def test_same_settings_in_another_order_give_the_same_digest() -> None:
    one = config(safety(blocked_categories=["violence", "hate"], blocked_terms=["a", "b"]))
    two = config(safety(blocked_categories=["hate", "violence"], blocked_terms=["b", "a"]))
    assert one == two
    assert one.digest() == two.digest()
    assert config(safety(max_toxicity=0.1)).digest() != config(safety()).digest()


def test_limits_and_values_match_botocore() -> None:
    shapes = botocore_shapes()
    name = shapes["GuardrailName"]
    assert (name["min"], name["max"]) == (1, g.NAME_MAX)
    assert set(name["pattern"]) - set("[]+") <= set("0-9a-zA-Z_")
    assert shapes["GuardrailBlockedMessaging"]["max"] == g.MESSAGING_MAX
    assert shapes["GuardrailDescription"]["max"] == g.DESCRIPTION_MAX
    assert shapes["GuardrailWordsConfig"]["max"] == g.WORDS_MAX
    assert shapes["GuardrailWordConfigTextString"]["max"] == g.WORD_MAX
    assert set(shapes["GuardrailContentFilterType"]["enum"]) == set(g.FILTER_TYPES)
    assert set(g.PII_ENTITIES) <= set(shapes["GuardrailPiiEntityType"]["enum"])
    assert "ANONYMIZE" in shapes["GuardrailSensitiveInformationAction"]["enum"]
    assert tuple(sorted(g.PII_ENTITIES)) == g.PII_ENTITIES
    assert shapes["GuardrailTopicsConfig"]["max"] == g.TOPICS_MAX
    topic_name = re.compile(shapes["GuardrailTopicName"]["pattern"])
    for category in g.CATEGORIES.values():
        assert category.filter is None or category.filter in g.FILTER_TYPES
        topic = category.topic
        if topic is None:
            continue
        assert topic_name.fullmatch(topic.name)
        assert len(topic.name) <= shapes["GuardrailTopicName"]["max"]
        assert len(topic.definition) <= shapes["GuardrailTopicDefinition"]["max"]
        assert len(topic.examples) <= shapes["GuardrailTopicExamples"]["max"]
        assert all(len(e) <= shapes["GuardrailTopicExample"]["max"] for e in topic.examples)


# -- names ------------------------------------------------------------------------------------


def test_name_is_readable_and_within_bedrock_rules() -> None:
    name = g.guardrail_name("support-assistant", "prod", "blue", "v1.5.0")
    assert name.startswith("support-assistant-prod-blue-v1-5-0-")
    assert len(name) <= g.NAME_MAX
    assert g.NAME_PATTERN.fullmatch(name)
    assert name == g.guardrail_name("support-assistant", "prod", "blue", "v1.5.0")


def test_long_names_are_cut_keeping_a_hash() -> None:
    long = g.guardrail_name("m" * 60, "stack-" * 5, "green", "v10.20.30-0123456789ab")
    assert len(long) == g.NAME_MAX
    assert g.NAME_PATTERN.fullmatch(long)
    other = g.guardrail_name("m" * 60, "stack-" * 5, "green", "v10.20.31-0123456789ab")
    assert long != other
    assert long[:-9] == other[:-9]  # same readable prefix, told apart by the hash


def test_names_are_unique_per_stack_colour_and_version() -> None:
    names = {
        g.guardrail_name(model, stack, colour, version)
        for model in ("support-assistant", "a")
        for stack in ("prod", "staging")
        for colour in ("blue", "green")
        for version in ("v1.5.0", "v1.5.1", "v1-5-0")
    }
    assert len(names) == 2 * 2 * 2 * 3
    # Joining with "-" is ambiguous; the hash is not.
    assert g.guardrail_name("a-b", "c", "blue", "v1") != g.guardrail_name("a", "b-c", "blue", "v1")


# -- IAM --------------------------------------------------------------------------------------


def test_pods_may_apply_exactly_this_guardrail() -> None:
    arn = f"arn:aws:bedrock:eu-west-1:{OFFLINE_ACCOUNT}:guardrail/abc123def456"
    assert apply_guardrail_policy(arn) == {
        "Sid": "ApplyBundleGuardrail",
        "Effect": "Allow",
        "Action": ["bedrock:ApplyGuardrail"],
        "Resource": [arn],
    }
    with pytest.raises(ValueError, match="unversioned"):
        apply_guardrail_policy(f"{arn}:3")


# -- the component ----------------------------------------------------------------------------


def bundle_guardrail(name: str, value: Safety, **extra: Any) -> BundleGuardrail:
    return BundleGuardrail(
        name,
        BundleGuardrailArgs(
            safety=value,
            guardrail_name=g.guardrail_name("support-assistant", "prod", "blue", name),
            description=f"support-assistant {name} on blue",
            **extra,
        ),
    )


@pulumi.runtime.test
def test_component_declares_the_guardrail_and_its_version() -> pulumi.Output[None]:
    component = bundle_guardrail("gr1", example(), kms_key_arn="arn:aws:kms:eu-west-1:1:key/k")
    expected = config(example())

    def check(values: list[str]) -> None:
        guardrail_id, arn, version = values
        inputs = REGISTERED[f"{GUARDRAIL}::gr1"]
        assert inputs["name"] == g.guardrail_name("support-assistant", "prod", "blue", "gr1")
        assert inputs["kmsKeyArn"] == "arn:aws:kms:eu-west-1:1:key/k"
        assert inputs["blockedInputMessaging"] == inputs["blockedOutputsMessaging"]
        assert inputs["blockedInputMessaging"] == "Sorry, I can't help with that."
        filters_in = {f["type"]: f for f in inputs["contentPolicyConfig"]["filtersConfigs"]}
        assert set(filters_in) == {"SEXUAL", "VIOLENCE"}
        assert filters_in["VIOLENCE"]["inputStrength"] == "HIGH"
        assert filters_in["VIOLENCE"]["outputStrength"] == "HIGH"
        assert filters_in["VIOLENCE"]["outputEnabled"] is True
        topics = inputs["topicPolicyConfig"]["topicsConfigs"]
        assert [t["name"] for t in topics] == ["Self-harm", "Sexual content involving minors"]
        assert topics[0]["examples"]
        assert "wordPolicyConfig" not in inputs
        pii = inputs["sensitiveInformationPolicyConfig"]["piiEntitiesConfigs"]
        assert {p["type"] for p in pii} >= {
            "EMAIL",
            "PHONE",
            "CREDIT_DEBIT_CARD_NUMBER",
            "US_SOCIAL_SECURITY_NUMBER",
            "IP_ADDRESS",
            "AWS_ACCESS_KEY",
            "AWS_SECRET_KEY",
        }
        assert {p["action"] for p in pii} == {"ANONYMIZE"}
        pinned = REGISTERED[f"{VERSION}::gr1"]
        assert pinned["guardrailArn"] == arn
        assert pinned["skipDestroy"] is True
        assert pinned["description"] == version_description(expected.digest())
        assert arn.endswith(f":guardrail/{guardrail_id}")
        assert version == "1"

    return pulumi.Output.all(
        component.guardrail_id, component.guardrail_arn, component.version
    ).apply(check)


@pulumi.runtime.test
def test_words_reach_the_guardrail() -> pulumi.Output[None]:
    component = bundle_guardrail("gr2", safety(blocked_terms=["Acme Secret"]))

    def check(_: str) -> None:
        words = REGISTERED[f"{GUARDRAIL}::gr2"]["wordPolicyConfig"]["wordsConfigs"]
        assert words == [
            {
                "text": "Acme Secret",
                "inputAction": "BLOCK",
                "outputAction": "BLOCK",
                "inputEnabled": True,
                "outputEnabled": True,
            }
        ]

    return component.version.apply(check)


@pulumi.runtime.test
def test_a_changed_safety_config_makes_a_new_version() -> pulumi.Output[None]:
    before = bundle_guardrail("gr3", safety())
    again = bundle_guardrail("gr4", safety())
    after = bundle_guardrail("gr5", safety(max_toxicity=0.5))

    def check(_: list[str]) -> None:
        descriptions = [REGISTERED[f"{VERSION}::{n}"]["description"] for n in ("gr3", "gr4", "gr5")]
        # The description is the version's replace-only trigger: equal settings, equal
        # description (no new version); changed settings, a new description (a new version).
        assert descriptions[0] == descriptions[1]
        assert descriptions[2] != descriptions[0]
        assert all(len(d) <= g.DESCRIPTION_MAX for d in descriptions)

    return pulumi.Output.all(before.version, again.version, after.version).apply(check)


def test_component_refuses_a_bundle_without_moderation() -> None:
    with pytest.raises(g.GuardrailError, match="needs no guardrail"):
        bundle_guardrail("gr6", safety(input_moderation=False, output_moderation=False))
