"""Moderation: is this text allowed through, and with which personal data masked?

The gateway calls :meth:`Moderator.check` on one text, and :meth:`Moderator.check_all` on
several texts decided together in one call (a conversation's messages and their text parts;
an answer's text and its tool calls' arguments): on the client's input (``source="INPUT"``)
before forwarding it to the model, and on the model's output (``"OUTPUT"``) before returning
it; a streamed answer is checked a few sentences at a time, each check covering what was
released before, so ``check`` runs a few times per response.
Whether each side is checked at all (``input_moderation``, ``output_moderation``) is the
gateway's decision, not the moderator's. A blocked verdict makes the gateway answer with the
bundle's ``refusal_message``; a :class:`ModerationError` (the moderator could not decide)
makes it refuse the request with 503: moderation fails closed.

Two moderators, chosen by :func:`moderator_for`:

**Bedrock** (:class:`BedrockModerator`, when the gateway is given a guardrail ``ID:VERSION``)
calls Amazon Bedrock ``ApplyGuardrail``; the guardrail is built from ``safety.json`` by
``weightshift/bundles/guardrail.py``. An intervention that only masked personal data (every acting
sensitive-information entity or regex ANONYMIZED, no policy BLOCKED) passes, with the masked
text. Any other intervention blocks: content filters, denied topics, blocked words, blocked
personal data, contextual grounding, and anything this module does not recognise.

**Local** (:class:`LocalModerator`, no guardrail given) needs no cloud at all:

- ``blocked_terms``: a text containing a term as a whole word or whole phrase is blocked,
  ignoring case; "class" blocks "Class" and "class." but not "classic" or "subclass". Words
  of a phrase may be separated by any whitespace (a line break included). Blank terms are
  ignored.
- ``pii_redaction`` true: personal data is replaced by a placeholder, and the text passes:

  ==============  ===========================================================================
  ``[EMAIL]``     ``name@example.com``
  ``[PHONE]``     ``+`` followed by 8 to 15 digits (E.164; spaces or dashes allowed), and
                  North American numbers with separators: ``(415) 555-0100``,
                  ``415-555-0100``, ``415.555.0100``, ``415 555 0100``, ``+1 415 555 0100``.
                  A bare run of 10 digits is not masked: order and ticket numbers look the
                  same.
  ``[CARD]``      13 to 19 digits, optionally grouped by spaces or dashes, that pass the Luhn
                  check (a 16-digit number that fails it is left alone).
  ``[SSN]``       US social security numbers ``NNN-NN-NNNN``, except those the SSA never
                  issues: area 000, 666 or 900-999, group 00, serial 0000.
  ``[IP]``        IPv4 addresses (four numbers 0-255 joined by dots). A version string of
                  that shape standing alone ("upgrade to 1.2.3.4") is masked too: it cannot
                  be told apart from an address. Five or more parts (``1.2.3.4.5``) or a
                  prefix glued to it (``v1.2.3.4``) are left alone.
  ``[AWS_KEY]``   AWS access key ids: ``AKIA`` or ``ASIA`` and 16 upper-case letters or
                  digits.
  ==============  ===========================================================================

- ``blocked_categories`` (violence, self-harm, ...) are **not** enforced locally: telling
  them apart needs a classifier, which the Bedrock guardrail has and this module does not. A
  bundle that relies on categories must be served with a guardrail.
- ``max_toxicity`` has no local effect either (it sets the guardrail's filter strength).

Terms are looked for in the text as written, before masking, so a term such as "email"
does not match the ``[EMAIL]`` placeholder. Reasons (for logs and metrics) name the term
("blocked term: 'xyz'") or the kind of personal data ("pii: EMAIL"), never the personal data
itself.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoRegionError

from weightshift.bundles.schemas import Safety

Source = Literal["INPUT", "OUTPUT"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the moderator decided about one text."""

    blocked: bool
    """True: the gateway answers with the bundle's ``refusal_message`` instead."""
    text: str
    """The text to use when not blocked (personal data masked where redaction is on). Empty
    when blocked, so a blocked text cannot leak by mistake."""
    reasons: tuple[str, ...]
    """Why, for logs and metrics: ``("blocked term: 'xyz'",)``, ``("pii: EMAIL",)``. Never
    the personal data itself."""
    redacted: bool = False
    """``text`` differs from the input: personal data was masked."""


@dataclass(frozen=True, slots=True)
class Verdicts:
    """What the moderator decided about several texts checked together: one decision for
    them all (a block anywhere blocks them all), each text masked on its own."""

    blocked: bool
    texts: tuple[str, ...]
    """Each text to use when not blocked, in the order given (masked where redaction is on).
    Empty when blocked."""
    reasons: tuple[str, ...]
    redacted: bool = False
    """Some text differs from its input: personal data was masked."""


class Moderator(Protocol):
    name: str
    """For logs: ``local`` or ``bedrock:<id>:<version>``."""

    async def check(self, text: str, source: Source) -> Verdict: ...

    async def check_all(self, texts: Sequence[str], source: Source) -> Verdicts:
        """``texts`` decided in one moderation call (Bedrock: one ``ApplyGuardrail`` with a
        content block per text), each masked on its own."""
        ...


class ModerationError(Exception):
    """The moderator could not decide (e.g. Bedrock unreachable): the gateway fails closed."""


def local_gaps(safety: Safety) -> list[str]:
    """What ``safety`` asks for that the local moderator cannot enforce (needs a guardrail)."""
    if not (safety.input_moderation or safety.output_moderation):
        return []
    if safety.blocked_categories:
        return [
            "blocked_categories "
            + ", ".join(safety.blocked_categories)
            + " (a classifier's job: only the Bedrock guardrail enforces them)"
        ]
    return []


def moderator_for(
    safety: Safety, guardrail: tuple[str, str] | None, region: str | None = None
) -> Moderator:
    """The Bedrock moderator when a guardrail ``(id, version)`` is given, else the local one."""
    if guardrail is None:
        return LocalModerator(safety)
    guardrail_id, version = guardrail
    return BedrockModerator(guardrail_id, version, region=region)


# --- local ----------------------------------------------------------------------------------

_Trie: TypeAlias = dict[str, "_Trie"]
_END = ""
"""Trie key marking that a term ends at this node (no character is the empty string)."""


def _normalise(term: str) -> str:
    """The key a term (or the text it matched) is known by: lower case, single spaces."""
    return " ".join(term.split()).lower()


def _trie_pattern(node: _Trie) -> str:
    """The regex for the terms below ``node``, sharing their common prefixes.

    A plain alternation ``term1|term2|...`` makes the regex engine try every term at every
    word start: with the 10,000 terms a bundle may list, that is milliseconds per sentence.
    Branching only where terms differ costs one step per character instead.
    """
    alternatives = []
    for first, branch in sorted(node.items()):
        if first == _END:
            continue
        chain, below = [first], branch
        # Follow single-child runs without recursing, so recursion depth is the number of
        # places where terms diverge, not the length of the longest term.
        while len(below) == 1 and _END not in below:
            ((char, below),) = below.items()
            chain.append(char)
        alternatives.append("".join(map(_atom, chain)) + _trie_pattern(below))
    if not alternatives:
        return ""
    if len(alternatives) == 1 and _END not in node:
        return alternatives[0]
    group = "(?:" + "|".join(alternatives) + ")"
    # Greedy: the longest term is tried first, a shorter one if the word goes on after it.
    return group + "?" if _END in node else group


def _atom(char: str) -> str:
    return r"\s+" if char == " " else re.escape(char)


def terms_regex(terms: Iterable[str]) -> tuple[re.Pattern[str] | None, dict[str, str]]:
    """The regex matching any of ``terms`` as a whole word or phrase, ignoring case (None
    when there is no term), and each term by its normalised form, to report the term as
    the bundle wrote it."""
    by_key: dict[str, str] = {}
    for term in terms:
        key = _normalise(term)
        if key:  # a blank term would match between any two spaces: block everything
            by_key.setdefault(key, term.strip())
    if not by_key:
        return None, by_key
    root: _Trie = {}
    for key in by_key:
        node = root
        for char in key:
            node = node.setdefault(char, {})
        node[_END] = {}
    # Lookarounds rather than \b: \b needs a word character at the term's edge, which a
    # term such as "c++" or "#tag" does not have.
    pattern = r"(?<!\w)" + _trie_pattern(root) + r"(?!\w)"
    return re.compile(pattern, re.IGNORECASE), by_key


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_PII_PATTERNS: Mapping[str, str] = {
    # Order matters where two kinds could start at the same place: the first listed wins.
    # Each pattern is anchored at the start of its run of characters (the lookbehinds), so a
    # long run that is not personal data is scanned once, not once per character.
    "AWS_KEY": r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])",
    "EMAIL": r"(?<![\w.%+-])[\w.%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}",
    "SSN": r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])",
    "CARD": r"(?<![\d-])\d(?:[ -]?\d){12,18}(?!\d)",
    "PHONE": (
        r"(?<![\w+])(?:"
        r"(?:\+?1[ .-]?)?(?:\([2-9]\d\d\) ?|[2-9]\d\d[ .-])[2-9]\d\d[ .-]\d{4}"
        r"|\+[1-9](?:[ -]?\d){7,14}"
        r")(?!\d)"
    ),
    "IP": rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\w|\.\d)",
}
_PII = re.compile("|".join(f"(?P<{kind}>{pattern})" for kind, pattern in _PII_PATTERNS.items()))
# Every kind above has a digit, an @ or an AWS key prefix. Most sentences have none of them,
# and this search skips to them far faster than the patterns above can rule each place out.
_MAYBE_PII = re.compile(r"[\d@]|A[KS]IA")
_PLACEHOLDER = {kind: f"[{kind}]" for kind in _PII_PATTERNS}
_PII_REASON = {kind: f"pii: {kind}" for kind in _PII_PATTERNS}
_DIGITS_ONLY = str.maketrans("", "", " -")


def luhn_valid(number: str) -> bool:
    """Whether a card number (digits, spaces and dashes) passes the Luhn check."""
    digits = number.translate(_DIGITS_ONLY)
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def redact(text: str) -> tuple[str, tuple[str, ...]]:
    """``text`` with its personal data replaced by placeholders, and the kinds found (in
    order of first appearance; empty when nothing was masked)."""
    if _MAYBE_PII.search(text) is None:  # the common case: one fast scan, no allocation
        return text, ()
    first = _PII.search(text)
    if first is None:
        return text, ()
    pieces: list[str] = []
    kinds: list[str] = []
    end = 0
    for match in _PII.finditer(text, first.start()):
        kind = match.lastgroup
        assert kind is not None  # every alternative is a named group
        if kind == "CARD" and not luhn_valid(match.group()):
            continue
        pieces += (text[end : match.start()], _PLACEHOLDER[kind])
        end = match.end()
        if kind not in kinds:
            kinds.append(kind)
    if not kinds:
        return text, ()
    pieces.append(text[end:])
    return "".join(pieces), tuple(_PII_REASON[kind] for kind in kinds)


class LocalModerator:
    """Blocked terms and personal data, in process (see the module docstring)."""

    name = "local"

    def __init__(self, safety: Safety) -> None:
        self._terms, self._term_names = terms_regex(safety.blocked_terms)
        self._redact = safety.pii_redaction

    def blocked_terms(self, text: str) -> tuple[str, ...]:
        """The reasons for each distinct blocked term in ``text``, in order of appearance."""
        if self._terms is None or self._terms.search(text) is None:
            return ()
        found: dict[str, None] = {}
        for match in self._terms.finditer(text):
            key = _normalise(match.group())
            found[f"blocked term: {self._term_names.get(key, key)!r}"] = None
        return tuple(found)

    def decide(self, text: str) -> Verdict:
        blocked = self.blocked_terms(text)
        if blocked:
            return Verdict(True, "", blocked)
        if not self._redact:
            return Verdict(False, text, ())
        masked, kinds = redact(text)
        return Verdict(False, masked, kinds, redacted=bool(kinds))

    async def check(self, text: str, source: Source) -> Verdict:
        # The same rules on both sides; which sides are checked is the gateway's decision.
        return self.decide(text)

    def decide_all(self, texts: Sequence[str]) -> Verdicts:
        # Terms across the texts as one (a phrase split across two messages still blocks),
        # personal data masked in each text alone.
        blocked = self.blocked_terms("\n\n".join(texts))
        if blocked:
            return Verdicts(True, (), blocked)
        if not self._redact:
            return Verdicts(False, tuple(texts), ())
        masked: list[str] = []
        kinds: dict[str, None] = {}
        for text in texts:
            one, found = redact(text)
            masked.append(one)
            kinds.update(dict.fromkeys(found))
        return Verdicts(False, tuple(masked), tuple(kinds), redacted=bool(kinds))

    async def check_all(self, texts: Sequence[str], source: Source) -> Verdicts:
        return self.decide_all(texts)


# --- Bedrock --------------------------------------------------------------------------------

_CLIENT_CONFIG = Config(
    # A moderation call holds up the client's answer: fail fast, and let the gateway answer
    # 503 with Retry-After rather than hang a request on a slow Bedrock.
    connect_timeout=2,
    read_timeout=5,
    retries={"mode": "standard", "total_max_attempts": 2},
    # asyncio.to_thread's pool has up to 32 threads; botocore's default of 10 connections
    # would make the rest wait for a connection.
    max_pool_connections=32,
)

_HINTS = {
    "AccessDeniedException": "give the gateway's role bedrock:ApplyGuardrail on this guardrail",
    "ResourceNotFoundException": "check the guardrail id, version and region",
    "ValidationException": "check the guardrail id and version (a number or DRAFT)",
    "ThrottlingException": "Bedrock is throttling: retry, or raise the ApplyGuardrail quota",
    "ServiceQuotaExceededException": "raise the ApplyGuardrail quota",
}


_KNOWN_ASSESSMENT_KEYS = frozenset(
    {"topicPolicy", "contentPolicy", "wordPolicy", "sensitiveInformationPolicy"}
    | {"contextualGroundingPolicy", "invocationMetrics", "appliedGuardrailDetails"}
)
"""The parts of an assessment read below, or that report without acting (metrics, ids)."""


def _acting(items: Iterable[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    """The assessment entries that took an action (detect-only entries say NONE)."""
    return [item for item in items or () if item.get("action", "NONE") != "NONE"]


def assessment_reasons(assessments: Sequence[Mapping[str, Any]]) -> tuple[list[str], bool]:
    """The reasons for the acting policies, and whether anything other than masking acted.

    Every acting entry but an ANONYMIZED personal-data one counts as a block, whatever its
    action is called, so that a policy or action Bedrock adds later fails closed.
    """
    reasons: dict[str, None] = {}
    blocking = False

    def add(reason: str, action: str) -> None:
        nonlocal blocking
        reasons[reason] = None
        blocking = blocking or action != "ANONYMIZED"

    for assessment in assessments:
        for item in _acting(assessment.get("topicPolicy", {}).get("topics")):
            add(f"topic: {item.get('name')}", "BLOCKED")
        for item in _acting(assessment.get("contentPolicy", {}).get("filters")):
            add(f"content: {item.get('type')}", "BLOCKED")
        words = assessment.get("wordPolicy", {})
        for item in _acting(words.get("customWords")):
            add(f"word: {item.get('match')!r}", "BLOCKED")
        for item in _acting(words.get("managedWordLists")):
            # The managed list's type, not the match: the match is a profanity.
            add(f"word: {item.get('type')}", "BLOCKED")
        sensitive = assessment.get("sensitiveInformationPolicy", {})
        # The kind (or the regex's name), never the match: the match is the personal data.
        for item in _acting(sensitive.get("piiEntities")):
            add(f"pii: {item.get('type')}", item["action"])
        for item in _acting(sensitive.get("regexes")):
            add(f"pii: {item.get('name')}", item["action"])
        for item in _acting(assessment.get("contextualGroundingPolicy", {}).get("filters")):
            add(f"grounding: {item.get('type')}", "BLOCKED")
        for policy in sorted(set(assessment) - _KNOWN_ASSESSMENT_KEYS):
            add(f"policy: {policy}", "BLOCKED")  # e.g. automated reasoning: not configured
    return list(reasons), blocking


def guardrail_verdict(response: Mapping[str, Any], text: str) -> Verdict:
    """The verdict for an ``ApplyGuardrail`` response about ``text``."""
    if response.get("action") == "NONE":
        return Verdict(False, text, ())
    reasons, blocking = assessment_reasons(response.get("assessments") or ())
    if reasons and not blocking:
        outputs = response.get("outputs") or ()
        masked = "".join(output.get("text", "") for output in outputs)
        if outputs:
            return Verdict(False, masked, tuple(reasons), redacted=True)
        # Masking without the masked text: the original must not go out; block.
        reasons.append("guardrail masked personal data but returned no text")
    return Verdict(True, "", tuple(reasons) or (f"guardrail: {response.get('action')}",))


def guardrail_verdicts(response: Mapping[str, Any], texts: Sequence[str]) -> Verdicts | None:
    """The verdict for an ``ApplyGuardrail`` response about ``texts`` (one content block
    each, in order); None where it masked but its ``outputs`` do not match the blocks one
    for one (the masked texts cannot be told apart: ask about each text alone)."""
    if response.get("action") == "NONE":
        return Verdicts(False, tuple(texts), ())
    reasons, blocking = assessment_reasons(response.get("assessments") or ())
    if reasons and not blocking:
        outputs = response.get("outputs") or ()
        if len(outputs) == len(texts) and all("text" in output for output in outputs):
            masked = tuple(str(output["text"]) for output in outputs)
            return Verdicts(False, masked, tuple(reasons), redacted=True)
        return None
    return Verdicts(True, (), tuple(reasons) or (f"guardrail: {response.get('action')}",))


class BedrockModerator:
    """Amazon Bedrock ``ApplyGuardrail`` against one guardrail version."""

    def __init__(
        self,
        guardrail_id: str,
        guardrail_version: str,
        *,
        client: Any = None,
        region: str | None = None,
    ) -> None:
        if not guardrail_id or not guardrail_version:
            raise ValueError(
                f"guardrail {guardrail_id!r} version {guardrail_version!r}: give both the"
                " guardrail id and its version, e.g. abc123def456:3"
            )
        self.guardrail_id = guardrail_id
        self.guardrail_version = guardrail_version
        self.name = f"bedrock:{guardrail_id}:{guardrail_version}"
        if client is None:
            try:
                client = boto3.client("bedrock-runtime", region_name=region, config=_CLIENT_CONFIG)
            except NoRegionError:
                raise ValueError(
                    f"guardrail {guardrail_id}: no AWS region to call Bedrock in;"
                    " give --region or set AWS_REGION"
                ) from None
        self._client = client

    def _describe(self) -> str:
        return f"Bedrock guardrail {self.guardrail_id} version {self.guardrail_version}"

    async def check(self, text: str, source: Source) -> Verdict:
        if not text.strip():
            return Verdict(False, text, ())  # nothing to moderate; the API rejects empty text
        return guardrail_verdict(await self._apply([text], source), text)

    async def check_all(self, texts: Sequence[str], source: Source) -> Verdicts:
        asked = [index for index, text in enumerate(texts) if text.strip()]
        if not asked:
            return Verdicts(False, tuple(texts), ())
        blocks = [texts[index] for index in asked]
        decided = guardrail_verdicts(await self._apply(blocks, source), blocks)
        if decided is None:
            # Masked, but the outputs do not line up with the blocks: each text alone (rare;
            # Bedrock answers one output per block), never a masked text in the wrong place.
            alone = [await self.check(text, source) for text in blocks]
            reasons = tuple(dict.fromkeys(r for verdict in alone for r in verdict.reasons))
            if any(verdict.blocked for verdict in alone):
                return Verdicts(True, (), reasons)
            decided = Verdicts(False, tuple(v.text for v in alone), reasons, redacted=True)
        if decided.blocked or len(asked) == len(texts):
            return decided
        merged = list(texts)
        for index, text in zip(asked, decided.texts, strict=True):
            merged[index] = text
        return Verdicts(False, tuple(merged), decided.reasons, decided.redacted)

    async def _apply(self, texts: Sequence[str], source: Source) -> Mapping[str, Any]:
        """``ApplyGuardrail`` on ``texts``, one content block each."""
        try:
            # boto3 blocks: run it in a thread so other requests keep being served meanwhile.
            response: Mapping[str, Any] = await asyncio.to_thread(
                self._client.apply_guardrail,
                guardrailIdentifier=self.guardrail_id,
                guardrailVersion=self.guardrail_version,
                source=source,
                content=[{"text": {"text": text}} for text in texts],
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "Error")
            hint = _HINTS.get(code, "retry; if it persists, check Bedrock's health")
            raise ModerationError(f"{self._describe()} failed: {code}: {hint}") from error
        except BotoCoreError as error:  # no connection, timeout, no credentials
            raise ModerationError(
                f"{self._describe()} unreachable: {error}; check network access to Bedrock"
                " and the gateway's AWS credentials"
            ) from error
        return response
