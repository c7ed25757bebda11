"""The gateway's moderators: what a client or a model's answer loses to moderation, and what
it keeps. Local rules run as they are; Bedrock ApplyGuardrail runs against a stubbed client
whose requests and responses botocore validates against the service model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber

from weightshift.bundles.schemas import Safety
from weightshift.gateway.moderation import (
    BedrockModerator,
    LocalModerator,
    ModerationError,
    Source,
    Verdict,
    local_gaps,
    moderator_for,
)


def safety(**fields: Any) -> Safety:
    return Safety(refusal_message="Sorry, I can't help with that.", **fields)


def check(moderator: Any, text: str, source: Source = "INPUT") -> Verdict:
    verdict: Verdict = asyncio.run(moderator.check(text, source))
    return verdict


LOCAL = LocalModerator(safety(blocked_terms=["forbidden phrase", "class", "c++"]))

# --- local: blocked terms -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["Tell me the FORBIDDEN Phrase now", "the forbidden\nphrase", "Class.", "I write C++ daily"],
)
def test_a_blocked_term_blocks_ignoring_case_and_spacing(text: str) -> None:
    verdict = check(LOCAL, text)
    assert verdict.blocked
    assert verdict.text == ""  # nothing of a blocked text to pass on by mistake
    assert verdict.reasons[0].startswith("blocked term: '")


def test_the_reason_names_each_term_as_the_bundle_wrote_it() -> None:
    moderator = LocalModerator(safety(blocked_terms=["Acme Secret", "ZETA"]))
    verdict = check(moderator, "zeta and acme   secret, and zeta again", "OUTPUT")
    assert verdict.reasons == ("blocked term: 'ZETA'", "blocked term: 'Acme Secret'")


@pytest.mark.parametrize(
    "text", ["a classic example", "a subclass of it", "the forbidden phrases", "forbidden, phrase"]
)
def test_a_term_inside_another_word_or_split_by_punctuation_does_not_block(text: str) -> None:
    assert check(LOCAL, text) == Verdict(False, text, ())


def test_blank_terms_block_nothing() -> None:
    text = "hello, there!"  # a blank term would match between any two non-letters
    assert not check(LocalModerator(safety(blocked_terms=["", "   "])), text).blocked


def test_overlapping_terms_in_a_long_list_each_block_only_whole_words() -> None:
    terms = [f"term{n}" for n in range(9_997)] + ["bad", "badger", "bad word"]
    moderator = LocalModerator(safety(blocked_terms=terms))
    for text in ("a bad day", "a badger", "a bad  word", "x term9996 y", "term0"):
        assert check(moderator, text).blocked, text
    for text in ("a badge", "term9997", "badgers", "xterm5"):
        assert not check(moderator, text).blocked, text


# --- local: personal data -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("jane.doe+support@mail.example.co.uk", "EMAIL"),
        ("+44 20 7946 0958", "PHONE"),
        ("+14155550100", "PHONE"),
        ("(415) 555-0100", "PHONE"),
        ("415-555-0100", "PHONE"),
        ("415.555.0100", "PHONE"),
        ("+1 415 555 0100", "PHONE"),
        ("4111 1111 1111 1111", "CARD"),
        ("5500-0000-0000-0004", "CARD"),
        ("378282246310005", "CARD"),
        ("123-45-6789", "SSN"),
        ("192.168.10.255", "IP"),
        ("AKIAIOSFODNN7EXAMPLE", "AWS_KEY"),
        ("ASIAY34FZKBOKMUTVV7A", "AWS_KEY"),
        ("AKIAIOSFODNNEXAMPLEX", "AWS_KEY"),  # no digit at all
    ],
)
def test_personal_data_is_masked_and_reported_by_kind_only(value: str, kind: str) -> None:
    verdict = check(LOCAL, f"Reach me at {value}, thanks.", "OUTPUT")
    assert verdict == Verdict(False, f"Reach me at [{kind}], thanks.", (f"pii: {kind}",), True)
    assert value not in repr(verdict.reasons)


def test_several_kinds_are_all_masked_and_each_reported_once() -> None:
    text = "Mail a@example.com or b@example.com, card 4111111111111111, from 10.0.0.1."
    verdict = check(LOCAL, text)
    assert verdict.text == "Mail [EMAIL] or [EMAIL], card [CARD], from [IP]."
    assert verdict.reasons == ("pii: EMAIL", "pii: CARD", "pii: IP")


def test_a_number_failing_the_luhn_check_is_kept() -> None:
    text = "Order 4111 1111 1111 1112 and ref 1234567890123456 shipped."
    assert check(LOCAL, text) == Verdict(False, text, ())


@pytest.mark.parametrize("ssn", ["000-12-3456", "666-12-3456", "900-12-3456", "999-12-3456"])
def test_numbers_the_ssa_never_issues_are_kept(ssn: str) -> None:
    assert check(LOCAL, f"ref {ssn}").text == f"ref {ssn}"


def test_ordinary_text_with_numbers_passes_unchanged() -> None:
    text = (
        "Version 2.4.1 shipped on 2024-03-15 with 3 fixes; build 12345 took 1,234.5 s at "
        "99.9% uptime. It costs $1,299.99 until 10:30 on 15/03/2024, ticket #4521, order "
        "4155550100, ext. 555-0100, ISBN 978-3-16-148410-0, see section 1.2.3 or v1.2.3.4 "
        "and 1.2.3.4.5."
    )
    assert check(LOCAL, text) == Verdict(False, text, ())


def test_a_version_shaped_like_an_ipv4_address_is_masked() -> None:
    # The documented trade-off: four numbers 0-255 joined by dots cannot be told apart.
    assert check(LOCAL, "Upgrade to 1.2.3.4 today.").text == "Upgrade to [IP] today."


def test_terms_are_matched_before_masking() -> None:
    moderator = LocalModerator(safety(blocked_terms=["email"]))
    assert check(moderator, "write to a@example.com").text == "write to [EMAIL]"


def test_without_pii_redaction_personal_data_passes() -> None:
    moderator = LocalModerator(safety(pii_redaction=False))
    assert check(moderator, "a@example.com") == Verdict(False, "a@example.com", ())


SENTENCE = (
    "On 2024-03-15 our support team (build 12345, release 2.4) answered 1,234 questions "
    "about invoices, refunds and shipping within 99.9% of the promised time; customers "
    "rated it 4.8 of 5 and asked for faster replies on weekends, holidays and nights, "
    "and for a public status page at www.status.example.io."
)


def test_a_long_sentence_against_two_hundred_terms_is_decided_by_whole_words() -> None:
    """The case `scripts/bench_moderation.py` times (its speed is no test's business)."""
    terms = [f"secret{n}" for n in range(200)] + ["forbidden phrase"]
    moderator = LocalModerator(safety(blocked_terms=terms))

    async def run() -> list[bool]:
        clean = await moderator.check(SENTENCE, "OUTPUT")
        dirty = await moderator.check(SENTENCE + " Also secret42.", "OUTPUT")
        near = await moderator.check(SENTENCE + " Also secret4200x.", "OUTPUT")
        return [clean.blocked, dirty.blocked, near.blocked]

    assert asyncio.run(run()) == [False, True, False]


# --- Bedrock --------------------------------------------------------------------------------

GUARDRAIL = ("gr-abc123", "3")
USAGE = dict.fromkeys(
    (
        "topicPolicyUnits",
        "contentPolicyUnits",
        "wordPolicyUnits",
        "sensitiveInformationPolicyUnits",
        "sensitiveInformationPolicyFreeUnits",
        "contextualGroundingPolicyUnits",
    ),
    1,
)


@pytest.fixture
def bedrock() -> Iterator[tuple[BedrockModerator, Stubber]]:
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    with Stubber(client) as stubber:
        yield BedrockModerator(*GUARDRAIL, client=client), stubber
        stubber.assert_no_pending_responses()


def expect(
    stubber: Stubber, text: str, source: Source, response: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Stub one ApplyGuardrail call, which must ask exactly this."""
    params = {
        "guardrailIdentifier": "gr-abc123",
        "guardrailVersion": "3",
        "source": source,
        "content": [{"text": {"text": text}}],
    }
    if response is not None:
        stubber.add_response("apply_guardrail", {"usage": USAGE, **response}, params)
    return params


def test_bedrock_passes_text_it_did_not_act_on(bedrock: tuple[BedrockModerator, Stubber]) -> None:
    moderator, stubber = bedrock
    expect(stubber, "Hello there", "INPUT", {"action": "NONE", "outputs": [], "assessments": []})
    assert check(moderator, "Hello there", "INPUT") == Verdict(False, "Hello there", ())


def test_bedrock_masking_alone_passes_the_masked_text(
    bedrock: tuple[BedrockModerator, Stubber],
) -> None:
    moderator, stubber = bedrock
    text = "Write to jane@example.com"
    pii = {"match": "jane@example.com", "type": "EMAIL", "action": "ANONYMIZED"}
    response = {
        "action": "GUARDRAIL_INTERVENED",
        "outputs": [{"text": "Write to {EMAIL}"}],
        "assessments": [{"sensitiveInformationPolicy": {"piiEntities": [pii], "regexes": []}}],
    }
    expect(stubber, text, "OUTPUT", response)
    verdict = check(moderator, text, "OUTPUT")
    assert verdict == Verdict(False, "Write to {EMAIL}", ("pii: EMAIL",), redacted=True)


def test_bedrock_content_filter_blocks(bedrock: tuple[BedrockModerator, Stubber]) -> None:
    moderator, stubber = bedrock
    violence = {"type": "VIOLENCE", "confidence": "HIGH", "action": "BLOCKED"}
    insults = {"type": "INSULTS", "confidence": "LOW", "action": "NONE"}  # detected only
    response = {
        "action": "GUARDRAIL_INTERVENED",
        "outputs": [{"text": "Sorry, I can't help with that."}],
        "assessments": [{"contentPolicy": {"filters": [insults, violence]}}],
    }
    expect(stubber, "how do I hurt someone", "INPUT", response)
    assert check(moderator, "how do I hurt someone") == Verdict(True, "", ("content: VIOLENCE",))


def test_bedrock_masking_with_any_block_blocks(bedrock: tuple[BedrockModerator, Stubber]) -> None:
    moderator, stubber = bedrock
    pii = {"match": "jane@example.com", "type": "EMAIL", "action": "ANONYMIZED"}
    topic = {"name": "Self-harm", "type": "DENY", "action": "BLOCKED"}
    word = {"match": "acme secret", "action": "BLOCKED"}
    response = {
        "action": "GUARDRAIL_INTERVENED",
        "outputs": [{"text": "Sorry"}],
        "assessments": [
            {"sensitiveInformationPolicy": {"piiEntities": [pii], "regexes": []}},
            {
                "topicPolicy": {"topics": [topic]},
                "wordPolicy": {"customWords": [word], "managedWordLists": []},
            },
        ],
    }
    expect(stubber, "text", "OUTPUT", response)
    verdict = check(moderator, "text", "OUTPUT")
    assert verdict.blocked
    assert verdict.reasons == ("pii: EMAIL", "topic: Self-harm", "word: 'acme secret'")


def test_bedrock_intervening_for_an_unknown_reason_blocks(
    bedrock: tuple[BedrockModerator, Stubber],
) -> None:
    moderator, stubber = bedrock
    response = {
        "action": "GUARDRAIL_INTERVENED",
        "outputs": [{"text": "masked?"}],
        "assessments": [{"automatedReasoningPolicy": {"findings": []}}],
    }
    expect(stubber, "text", "INPUT", response)
    assert check(moderator, "text").blocked


def test_bedrock_throttling_is_a_moderation_error_naming_the_guardrail(
    bedrock: tuple[BedrockModerator, Stubber],
) -> None:
    moderator, stubber = bedrock
    params = expect(stubber, "hi", "INPUT")
    stubber.add_client_error(
        "apply_guardrail", "ThrottlingException", "Rate exceeded", 429, expected_params=params
    )
    with pytest.raises(ModerationError, match=r"gr-abc123 version 3 .*ThrottlingException"):
        check(moderator, "hi")


def test_bedrock_unreachable_is_a_moderation_error() -> None:
    class Unreachable:
        def apply_guardrail(self, **_: Any) -> dict[str, Any]:
            raise EndpointConnectionError(endpoint_url="https://bedrock-runtime.example")

    moderator = BedrockModerator(*GUARDRAIL, client=Unreachable())
    with pytest.raises(ModerationError, match=r"gr-abc123 version 3 unreachable"):
        check(moderator, "hi")


def test_bedrock_is_not_asked_about_empty_text(bedrock: tuple[BedrockModerator, Stubber]) -> None:
    moderator, _ = bedrock  # no stubbed response: a call would fail the test
    assert check(moderator, "  ") == Verdict(False, "  ", ())


# --- choosing ------------------------------------------------------------------------------


def test_a_guardrail_selects_bedrock_with_short_timeouts() -> None:
    moderator = moderator_for(safety(), GUARDRAIL, "eu-west-1")
    assert isinstance(moderator, BedrockModerator)
    assert moderator.name == "bedrock:gr-abc123:3"
    config = moderator._client.meta.config
    assert (config.region_name, config.connect_timeout, config.read_timeout) == (
        "eu-west-1",
        2,
        5,
    )
    assert config.retries["total_max_attempts"] == 2


def test_no_guardrail_selects_the_local_moderator_with_the_bundle_terms() -> None:
    moderator = moderator_for(safety(blocked_terms=["zeta"]), None)
    assert isinstance(moderator, LocalModerator)
    assert check(moderator, "ZETA").blocked


def test_what_local_moderation_cannot_enforce_is_named() -> None:
    needs = safety(input_moderation=True, blocked_categories=["violence"])
    (gap,) = local_gaps(needs)
    assert gap.startswith("blocked_categories violence")
    assert local_gaps(safety(input_moderation=True, blocked_terms=["x"], pii_redaction=True)) == []
    off = safety(input_moderation=False, output_moderation=False, blocked_categories=["violence"])
    assert local_gaps(off) == []
