"""The pairwise judge: which of two answers to the same question is better, or a tie.

The judge is a model: any OpenAI-compatible chat completions endpoint
(:class:`OpenAIJudge`), or Amazon Bedrock through the Converse API (:class:`BedrockJudge`).
It is given the prompt in ``judge_prompt_v1.txt`` (:data:`PROMPT_VERSION`; its sha256 goes
into the report, so a verdict is always traceable to the exact text the judge read).

**Position bias.** Judges favour one position. Each pair's order is drawn from the run's seed
and the prompt's id (:func:`candidate_first`), the same on every resume and whatever the
concurrency; the verdict is mapped back (:func:`unswap`) so the counts are the candidate's.

**Parsing.** The judge must end with ``{"verdict": "A" | "B" | "tie"}``. Every JSON object
with a ``verdict`` key in its answer is read (code fences and prose around them are fine);
exactly one distinct verdict must be found (:func:`parse_verdict`). Anything else is a
:class:`JudgeFormatError`: asked once more, then a judge failure, reported as such and never
counted as a tie.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from weightshift.evaluation.transport import Retry, TransportError, post_json

PROMPT_VERSION = "pairwise-v1"
_PROMPT_FILE = "judge_prompt_v1.txt"
MAX_JUDGED_CHARS = 24_000
"""Of the question and of each answer: beyond, the judge sees the start and a marker."""

Position = Literal["A", "B", "tie"]
Winner = Literal["candidate", "stable", "tie"]


def prompt_text() -> str:
    return (files("weightshift.evaluation") / _PROMPT_FILE).read_text(encoding="utf-8")


def prompt_sha256() -> str:
    return hashlib.sha256(prompt_text().encode()).hexdigest()


_SLOTS = re.compile(r"\{\{(question|answer_a|answer_b)\}\}")


def _clip(text: str) -> str:
    if len(text) <= MAX_JUDGED_CHARS:
        return text
    return f"{text[:MAX_JUDGED_CHARS]}\n[... {len(text) - MAX_JUDGED_CHARS:,} characters cut]"


def render(question: str, answer_a: str, answer_b: str) -> str:
    """The judge's message. One pass over the template: an answer that itself contains
    ``{{answer_b}}`` is shown as written, never substituted."""
    values = {"question": _clip(question), "answer_a": _clip(answer_a), "answer_b": _clip(answer_b)}
    return _SLOTS.sub(lambda match: values[match.group(1)], prompt_text())


class JudgeFormatError(ValueError):
    """The judge's answer holds no single verdict."""


_VERDICTS: dict[str, Position] = {"a": "A", "b": "B", "tie": "tie"}


def parse_verdict(text: str) -> Position:
    """The one verdict in the judge's answer (see the module docstring)."""
    decoder = json.JSONDecoder()
    found: set[Position] = set()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict) and "verdict" in value:
            verdict = value["verdict"]
            key = verdict.strip().lower() if isinstance(verdict, str) else None
            if key not in _VERDICTS:
                raise JudgeFormatError(f"verdict {verdict!r} is none of A, B, tie")
            found.add(_VERDICTS[key])
    if not found:
        raise JudgeFormatError('no {"verdict": ...} object in the answer')
    if len(found) > 1:
        raise JudgeFormatError(f"several verdicts in one answer: {', '.join(sorted(found))}")
    return found.pop()


def candidate_first(seed: int, case_id: str) -> bool:
    """Whether the candidate's answer is shown as A for this prompt: a fair coin drawn from
    the seed and the prompt's id alone."""
    digest = hashlib.sha256(f"{seed}\0{case_id}".encode()).digest()
    return random.Random(digest).random() < 0.5


def unswap(position: Position, candidate_is_a: bool) -> Winner:
    """The winner, for a verdict given on the order shown."""
    if position == "tie":
        return "tie"
    return "candidate" if (position == "A") == candidate_is_a else "stable"


class Judge(Protocol):
    model: str
    endpoint: str
    """For the report: an OpenAI-compatible base URL, or ``bedrock:<region>``."""

    async def ask(self, message: str) -> str:
        """The judge model's answer to ``message``; raises :class:`TransportError`."""
        ...


@dataclass(frozen=True)
class PairVerdict:
    winner: Winner | None
    """None: the judge failed (``failure`` says how)."""
    candidate_first: bool
    attempts: int
    failure: str | None = None


async def judge_pair(
    judge: Judge, *, seed: int, case_id: str, question: str, candidate: str, stable: str
) -> PairVerdict:
    """One pair judged: in its drawn order, a malformed verdict asked once more."""
    first = candidate_first(seed, case_id)
    a, b = (candidate, stable) if first else (stable, candidate)
    message = render(question, a, b)
    failure = ""
    for attempt in (1, 2):
        answer = ""
        try:
            answer = await judge.ask(message)
            position = parse_verdict(answer)
        except JudgeFormatError as error:
            failure = f"malformed verdict: {error}; answer began {answer[:120]!r}"
            continue
        except TransportError as error:
            return PairVerdict(None, first, attempt, f"judge unreachable: {error}")
        return PairVerdict(unswap(position, first), first, attempt)
    return PairVerdict(None, first, 2, failure)


def public_url(url: str) -> str:
    """``url`` without credentials, query or fragment: what the report may show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


class OpenAIJudge:
    """A chat completions endpoint: ``base_url`` as the OpenAI SDK takes it (``.../v1``)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        model: str,
        *,
        api_key: str | None,
        retry: Retry,
        max_tokens: int = 512,
    ) -> None:
        self.model = model
        self.endpoint = public_url(base_url)
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._session = session
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._retry = retry
        self._max_tokens = max_tokens

    async def ask(self, message: str) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": message}],
            "temperature": 0,
            "max_tokens": self._max_tokens,
        }
        answer = await post_json(
            self._session, self._url, body, headers=self._headers, retry=self._retry, what="judge"
        )
        try:
            content = answer.body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeFormatError("not a chat completion (no choices[0].message)") from None
        if not isinstance(content, str):
            raise JudgeFormatError("the chat completion has no text content")
        return content


class BedrockJudge:
    """A Bedrock model through ``Converse`` (``bedrock:InvokeModel`` permission). Throttling
    and 5xx are retried by botocore (standard mode); what remains is a judge failure."""

    def __init__(self, client: Any, model_id: str, region: str, max_tokens: int = 512) -> None:
        self.model = model_id
        self.endpoint = f"bedrock:{region}"
        self._client = client
        self._max_tokens = max_tokens

    async def ask(self, message: str) -> str:
        try:
            response = await asyncio.to_thread(
                self._client.converse,
                modelId=self.model,
                messages=[{"role": "user", "content": [{"text": message}]}],
                inferenceConfig={"maxTokens": self._max_tokens, "temperature": 0},
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "Error")
            raise TransportError(f"Bedrock Converse on {self.model} failed: {code}") from error
        except BotoCoreError as error:
            raise TransportError(f"Bedrock unreachable: {error}") from error
        texts = [
            part["text"]
            for part in response.get("output", {}).get("message", {}).get("content", [])
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        if not texts:
            raise JudgeFormatError(
                f"Converse answered no text (stopReason {response.get('stopReason')})"
            )
        return "".join(texts)
