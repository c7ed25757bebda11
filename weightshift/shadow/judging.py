"""The pairwise judge of ``weightshift eval run`` (:mod:`weightshift.evaluation.judge`) on
the shadow report's text sample.

Each pair is judged as ``eval run`` judges it: its order drawn from the seed and the
request id (the same on every run), a malformed verdict asked once more, a judge that
fails leaving the pair out (counted in the report, never a tie).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from weightshift.evaluation.judge import judge_pair

SCORES = {"candidate": 1.0, "tie": 0.5, "stable": 0.0}


class EvaluationJudge:
    """``make`` builds the judge for an HTTP session (an ``OpenAIJudge`` or a
    ``BedrockJudge``); ``concurrency`` pairs are judged at once."""

    def __init__(
        self, make: Callable[[aiohttp.ClientSession], Any], name: str, *, concurrency: int = 4
    ) -> None:
        self.make = make
        self._name = name
        self.concurrency = concurrency
        self.failures: list[str] = []

    @property
    def name(self) -> str:
        return self._name

    def judge(self, items: Sequence[tuple[str, str, str, str]], *, seed: int) -> list[float | None]:
        return asyncio.run(self._all(items, seed))

    async def _all(
        self, items: Sequence[tuple[str, str, str, str]], seed: int
    ) -> list[float | None]:
        bound = asyncio.Semaphore(self.concurrency)
        async with aiohttp.ClientSession() as session:
            judge = self.make(session)

            async def one(item: tuple[str, str, str, str]) -> float | None:
                case_id, prompt, stable, candidate = item
                async with bound:
                    verdict = await judge_pair(
                        judge,
                        seed=seed,
                        case_id=case_id,
                        question=prompt,
                        candidate=candidate,
                        stable=stable,
                    )
                if verdict.winner is None:
                    self.failures.append(f"{case_id}: {verdict.failure}")
                    return None
                return SCORES[verdict.winner]

            return list(await asyncio.gather(*(one(item) for item in items)))
