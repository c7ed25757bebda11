"""Measures of how far apart two answers' texts are, on the pairs that keep their text.

- **normalized edit distance**: RapidFuzz's ``Levenshtein.normalized_distance`` over
  characters, 0 (identical) to 1 (nothing in common);
- **ROUGE-L**: the F1 of the longest common subsequence of whitespace tokens (RapidFuzz's
  ``LCSseq`` over token lists), stable's answer as the reference, 1 for identical answers;
- **semantic similarity**: the cosine of the two answers' embeddings, from an
  OpenAI-compatible ``/v1/embeddings`` endpoint or an Amazon Bedrock embedding model;
- **a pairwise judge** (a :class:`Judge`): which answer is better, in random order.

An embedding or judge service that fails does not fail the report: the measure is reported
as not measured, with the reason.
"""

from __future__ import annotations

import json
import math
import random
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from rapidfuzz.distance import LCSseq, Levenshtein

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""An embeddings answer larger than this is refused (a broken or hostile endpoint)."""
BATCH = 32
"""Texts per embeddings request."""


class TextMeasureError(RuntimeError):
    """An embedding or judge service that did not answer usefully; the message says why."""


def edit_distance(stable: str, candidate: str) -> float:
    """Levenshtein distance over characters divided by the longer length (0..1)."""
    return float(Levenshtein.normalized_distance(stable, candidate))


def rouge_l(stable: str, candidate: str) -> float:
    """ROUGE-L F1 over whitespace tokens, stable's answer as the reference (0..1)."""
    reference, hypothesis = stable.split(), candidate.split()
    if not reference and not hypothesis:
        return 1.0
    if not reference or not hypothesis:
        return 0.0
    common = LCSseq.similarity(reference, hypothesis)
    if common == 0:
        return 0.0
    precision, recall = common / len(hypothesis), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b) or not a:
        raise TextMeasureError(
            f"embeddings of different or zero length ({len(a)} and {len(b)} numbers)"
        )
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    if norm == 0 or not math.isfinite(norm):
        raise TextMeasureError("an embedding of zero or non-finite length")
    return max(-1.0, min(1.0, dot / norm))


class Embedder(Protocol):
    """Turns texts into vectors, in order."""

    @property
    def name(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class OpenAIEmbeddings:
    """Any OpenAI-compatible ``POST /v1/embeddings`` (vLLM, text-embeddings-inference, ...).

    ``url`` is the API base (``http://host:8000/v1``) or the full ``.../embeddings`` URL;
    ``api_key`` goes in an ``Authorization: Bearer`` header when given."""

    def __init__(
        self, url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--embeddings-url {url!r}: give an http:// or https:// URL")
        base = url.rstrip("/")
        self.url = base if base.endswith("/embeddings") else f"{base}/embeddings"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout

    @property
    def name(self) -> str:
        return f"{self.model} at {self.url}"

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), BATCH):
            vectors.extend(self._batch(list(texts[start : start + BATCH])))
        return vectors

    def _batch(self, texts: list[str]) -> list[list[float]]:
        body = json.dumps({"model": self.model, "input": texts}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                data = answer.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as error:
            raise TextMeasureError(f"{self.url} answered HTTP {error.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise TextMeasureError(f"{self.url} did not answer ({error})") from None
        if len(data) > MAX_RESPONSE_BYTES:
            raise TextMeasureError(f"{self.url} answered more than {MAX_RESPONSE_BYTES} bytes")
        try:
            items = json.loads(data)["data"]
            ordered = sorted(items, key=lambda item: int(item["index"]))
            vectors = [[float(x) for x in item["embedding"]] for item in ordered]
        except (ValueError, KeyError, TypeError) as error:
            raise TextMeasureError(
                f"{self.url} did not answer an embeddings list ({error!r})"
            ) from None
        if len(vectors) != len(texts):
            raise TextMeasureError(
                f"{self.url} answered {len(vectors)} embeddings for {len(texts)} texts"
            )
        return vectors


class BedrockEmbeddings:
    """An Amazon Bedrock embedding model (Titan's ``inputText`` -> ``embedding``) through
    boto3's ``bedrock-runtime`` ``invoke_model``, one text per call."""

    def __init__(self, model_id: str, client: Any = None) -> None:
        import boto3  # noqa: PLC0415 (only when Bedrock is asked for)

        self.model_id = model_id
        self.client = client if client is not None else boto3.client("bedrock-runtime")

    @property
    def name(self) -> str:
        return f"Bedrock {self.model_id}"

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = []
        for text in texts:
            try:
                answer = self.client.invoke_model(
                    modelId=self.model_id,
                    body=json.dumps({"inputText": text}),
                    contentType="application/json",
                    accept="application/json",
                )
                data = answer["body"].read(MAX_RESPONSE_BYTES + 1)
                vectors.append([float(x) for x in json.loads(data)["embedding"]])
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code", "error")
                raise TextMeasureError(f"Bedrock {self.model_id}: {code}") from None
            except BotoCoreError as error:
                raise TextMeasureError(f"Bedrock {self.model_id}: {error}") from None
            except (ValueError, KeyError, TypeError) as error:
                raise TextMeasureError(
                    f"Bedrock {self.model_id} did not answer an embedding ({error!r})"
                ) from None
        return vectors


Preference = Literal["first", "second", "tie"]


class Judge(Protocol):
    """A pairwise judge over the sample: for each (request id, prompt, stable answer,
    candidate answer), the candidate's score: 1 win, 0.5 tie, 0 loss, None where the judge
    failed (not counted). It must show the two answers in a random order."""

    @property
    def name(self) -> str: ...

    def judge(
        self, items: Sequence[tuple[str, str, str, str]], *, seed: int
    ) -> list[float | None]: ...


class PreferenceJudge:
    """A :class:`Judge` from a function that says which of two answers it prefers; the
    order of each pair is drawn at random (seeded), so a judge that favours a position
    favours both colours alike."""

    def __init__(self, name: str, prefer: Callable[[str, str, str], Preference]) -> None:
        self._name = name
        self.prefer = prefer

    @property
    def name(self) -> str:
        return self._name

    def judge(self, items: Sequence[tuple[str, str, str, str]], *, seed: int) -> list[float | None]:
        rng = random.Random(seed)
        scores: list[float | None] = []
        for _id, prompt, stable, candidate in items:
            candidate_first = rng.random() < 0.5
            first, second = (candidate, stable) if candidate_first else (stable, candidate)
            verdict = self.prefer(prompt, first, second)
            if verdict == "tie":
                scores.append(0.5)
            else:
                scores.append(1.0 if (verdict == "first") == candidate_first else 0.0)
        return scores
