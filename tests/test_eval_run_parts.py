"""``weightshift eval run``'s parts alone: the judge's verdict parsing and order, the journal,
retries, the files' checks, moderation and identity, the Bedrock judge and guardrail
(botocore's Stubber: moto has neither Converse nor ApplyGuardrail), the report's writing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from aiohttp import web
from botocore.stub import Stubber

from tests.gateway_harness import free_port
from weightshift.bundles.versioning import BundleId
from weightshift.cli import main
from weightshift.evaluation import report as schema
from weightshift.evaluation.judge import (
    BedrockJudge,
    JudgeFormatError,
    OpenAIJudge,
    candidate_first,
    judge_pair,
    parse_verdict,
    prompt_sha256,
    public_url,
    render,
    unswap,
)
from weightshift.evaluation.run import (
    Journal,
    ModerationUnavailable,
    Plan,
    RunError,
    Runner,
    Target,
    journal_header,
    write_report,
)
from weightshift.evaluation.suites import (
    SuiteError,
    is_refusal,
    leaks,
    load_adversarial,
    load_prompts,
)
from weightshift.evaluation.transport import Retry, TransportError, post_json

CANDIDATE = BundleId.parse("support-assistant/v1.5.0-aaaaaaaaaaaa")
STABLE = BundleId.parse("support-assistant/v1.4.2-bbbbbbbbbbbb")


async def _no_wait(_: float) -> None:
    return None


# --- the judge ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('A is precise.\n{"verdict": "A"}', "A"),
        ('```json\n{"verdict": "b"}\n```', "B"),
        ('Equal.\n{"verdict": "Tie", "reason": "same"}', "tie"),
        ('{"verdict": "A"} ... to repeat: {"verdict": "A"}', "A"),
    ],
)
def test_verdicts_are_read_from_prose_and_fences(answer: str, expected: str) -> None:
    assert parse_verdict(answer) == expected


@pytest.mark.parametrize(
    "answer",
    [
        "A is better.",  # no JSON verdict
        '{"verdict": "A"} but then {"verdict": "B"}',  # two different verdicts
        '{"verdict": "both"}',
        '{"verdict": 1}',
        '{"verdict": "A"',  # cut short
        render("q", "a", "b"),  # an echo of the prompt lists every verdict
    ],
)
def test_malformed_verdicts_are_refused(answer: str) -> None:
    with pytest.raises(JudgeFormatError):
        parse_verdict(answer)


def test_render_substitutes_once_never_inside_answers() -> None:
    text = render("the {{answer_b}} question", "first {{question}}", "second")
    assert "the {{answer_b}} question" in text
    assert "first {{question}}" in text
    assert "[Answer B]\nsecond\n[End of answer B]" in text


def test_order_is_a_fair_coin_per_prompt_and_stable_across_runs() -> None:
    ids = [f"case-{n}" for n in range(400)]
    shown_first = [candidate_first(11, case) for case in ids]
    assert 150 < sum(shown_first) < 250  # both orders, about half each
    assert shown_first == [candidate_first(11, case) for case in ids]  # resume: same order
    assert shown_first != [candidate_first(12, case) for case in ids]


def test_unswap_gives_the_candidates_result_in_either_order() -> None:
    assert unswap("A", candidate_is_a=True) == "candidate"
    assert unswap("A", candidate_is_a=False) == "stable"
    assert unswap("B", candidate_is_a=True) == "stable"
    assert unswap("B", candidate_is_a=False) == "candidate"
    assert unswap("tie", candidate_is_a=False) == "tie"


class ScriptedJudge:
    """Prefers the answer holding ``GOOD``; ``malformed`` answers without a verdict first."""

    model, endpoint = "scripted", "http://judge"

    def __init__(self, malformed: int = 0) -> None:
        self.malformed = malformed
        self.asked = 0

    async def ask(self, message: str) -> str:
        self.asked += 1
        if self.malformed:
            self.malformed -= 1
            return "I cannot decide."
        a = message.split("[Answer A]")[1].split("[End of answer A]", maxsplit=1)[0]
        b = message.split("[Answer B]")[1].split("[End of answer B]", maxsplit=1)[0]
        position = "A" if "GOOD" in a and "GOOD" not in b else "B" if "GOOD" in b else "tie"
        return f'{{"verdict": "{position}"}}'


def test_the_swap_is_undone_whichever_order_was_shown() -> None:
    async def go() -> list[tuple[bool, str | None]]:
        judge = ScriptedJudge()
        found: list[tuple[bool, str | None]] = []
        for n in range(40):
            verdict = await judge_pair(
                judge, seed=3, case_id=f"c{n}", question="q", candidate="GOOD", stable="meh"
            )
            found.append((verdict.candidate_first, verdict.winner))
        return found

    found = asyncio.run(go())
    assert {first for first, _ in found} == {True, False}
    assert {winner for _, winner in found} == {"candidate"}


def test_a_malformed_verdict_is_asked_once_more_then_a_failure_not_a_tie() -> None:
    once = ScriptedJudge(malformed=1)
    verdict = asyncio.run(
        judge_pair(once, seed=1, case_id="x", question="q", candidate="GOOD", stable="b")
    )
    assert (verdict.winner, verdict.attempts, once.asked) == ("candidate", 2, 2)

    twice = ScriptedJudge(malformed=2)
    failed = asyncio.run(
        judge_pair(twice, seed=1, case_id="x", question="q", candidate="a", stable="b")
    )
    assert failed.winner is None
    assert failed.failure is not None
    assert "malformed verdict" in failed.failure
    assert twice.asked == 2


def _bedrock_judge() -> tuple[BedrockJudge, Stubber]:
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return BedrockJudge(client, "anthropic.claude-judge", "us-east-1"), Stubber(client)


def test_bedrock_judge_through_converse() -> None:
    judge, stubber = _bedrock_judge()
    message = render("q", "GOOD", "meh")
    stubber.add_response(
        "converse",
        {
            "output": {"message": {"role": "assistant", "content": [{"text": '{"verdict": "A"}'}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15},
            "metrics": {"latencyMs": 12},
        },
        {
            "modelId": "anthropic.claude-judge",
            "messages": [{"role": "user", "content": [{"text": message}]}],
            "inferenceConfig": {"maxTokens": 512, "temperature": 0},
        },
    )
    stubber.add_client_error("converse", "AccessDeniedException", "no", 403)
    with stubber:
        assert asyncio.run(judge.ask(message)) == '{"verdict": "A"}'
        with pytest.raises(TransportError, match="AccessDeniedException"):
            asyncio.run(judge.ask(message))
    assert judge.endpoint == "bedrock:us-east-1"


# --- HTTP: retries and the gateways -------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(handler: Callable[[web.Request], Any]) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        await runner.cleanup()


def _completion(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def test_429_and_5xx_are_retried_with_backoff_then_answered() -> None:
    statuses = [503, 429, 502]
    waits: list[float] = []

    async def handler(_: web.Request) -> web.Response:
        if statuses:
            status = statuses.pop(0)
            headers = {"retry-after": "2"} if status == 429 else {}
            return web.json_response({"error": {"message": "busy"}}, status=status, headers=headers)
        return web.json_response(_completion("ok"))

    async def wait(seconds: float) -> None:
        waits.append(seconds)

    async def go() -> Any:
        async with serve(handler) as url, aiohttp.ClientSession() as session:
            retry = Retry(attempts=4, backoff=0.5, sleep=wait)
            return await post_json(session, url, {}, retry=retry, what="gateway")

    answer = asyncio.run(go())
    assert answer.body["choices"][0]["message"]["content"] == "ok"
    assert len(waits) == 3
    assert waits[1] == 2.0  # Retry-After of the 429, as said
    assert 0.25 <= waits[0] <= 0.75
    assert 1.0 <= waits[2] <= 3.0  # doubled twice from 0.5, with jitter


def test_retries_are_bounded_and_other_4xx_not_retried() -> None:
    calls: list[int] = []
    status = {"now": 500}

    async def handler(_: web.Request) -> web.Response:
        calls.append(status["now"])
        return web.json_response({"error": {"message": "nope"}}, status=status["now"])

    async def go() -> None:
        async with serve(handler) as url, aiohttp.ClientSession() as session:
            retry = Retry(attempts=3, sleep=_no_wait)
            with pytest.raises(TransportError, match=r"failed 3 times, last: HTTP 500 \(nope\)"):
                await post_json(session, url, {}, retry=retry, what="gateway")
            status["now"] = 400
            with pytest.raises(TransportError, match="HTTP 400") as error:
                await post_json(session, url, {}, retry=retry, what="gateway")
            assert not error.value.retryable

    asyncio.run(go())
    assert calls == [500, 500, 500, 400]


class Gateways:
    """Two in-process stand-ins for gateways: each answers ``text(prompt)`` with the
    identity headers of its colour; ``fail`` makes one answer 500 until cleared."""

    def __init__(self, candidate_text: Callable[[str], tuple[str, str]]) -> None:
        self.candidate_text = candidate_text
        self.fail: set[str] = set()
        self.asked: list[tuple[str, str]] = []
        self.version = {"candidate": str(CANDIDATE), "stable": str(STABLE)}

    def handler(self, role: str) -> Callable[[web.Request], Any]:
        async def answer(request: web.Request) -> web.Response:
            body = await request.json()
            prompt = body["messages"][-1]["content"]
            self.asked.append((role, prompt))
            headers = {
                "x-weightshift-version": self.version[role],
                "x-weightshift-colour": "green" if role == "candidate" else "blue",
            }
            if role in self.fail:
                return web.json_response({"error": {"message": "down"}}, status=500)
            text, outcome = self.candidate_text(prompt) if role == "candidate" else ("meh", "ok")
            headers["x-weightshift-outcome"] = outcome
            if outcome == "refused":  # the gateway's own limit: a 400 with an OpenAI error
                error = {"error": {"message": text, "code": "input_too_long"}}
                return web.json_response(error, status=400, headers=headers)
            return web.json_response(_completion(text), headers=headers)

        return answer


class TermModerator:
    """Flags texts holding ``bad`` (and inputs holding ``badinput``)."""

    name = "test-moderator"

    def __init__(self) -> None:
        self.down = False

    async def flags(self, text: str, source: str) -> bool:
        if self.down:
            raise ModerationUnavailable("Bedrock throttled")
        return "badinput" in text if source == "INPUT" else "bad" in text


def _files(
    tmp_path: Path, prompts: list[dict[str, Any]], adversarial: list[dict[str, Any]]
) -> tuple[Any, Any]:
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(a) + "\n" for a in adversarial))
    return load_prompts(tmp_path / "p.jsonl"), load_adversarial(tmp_path / "a.jsonl")


def _plan(tmp_path: Path, urls: tuple[str, str], prompts: Any, adversarial: Any) -> Plan:
    return Plan(
        prompts=prompts,
        adversarial=adversarial,
        candidate=Target("candidate", urls[0], CANDIDATE, "green"),
        stable=Target("stable", urls[1], STABLE, "blue"),
        bundle=schema.BundleRef(id=str(CANDIDATE), digest="a" * 64),
        baseline=schema.BundleRef(id=str(STABLE), digest="b" * 64),
        refusal_message="Sorry, I can't help with that.",
        input_moderation=True,
        dataset="unit",
        seed=5,
        concurrency=3,
        retry=Retry(attempts=2, sleep=_no_wait),
    )


def _answer_for(prompt: str) -> tuple[str, str]:
    if "toolong" in prompt:
        return "The input is too long.", "refused"
    if "badinput" in prompt or "blockedout" in prompt:
        return "Sorry, I can't help with that.", "blocked"
    if "toxic" in prompt:
        return "GOOD but bad words", "ok"
    return "GOOD answer", "ok"


def test_toxicity_counts_flagged_answers_and_leaves_input_blocks_out(tmp_path: Path) -> None:
    prompts, adversarial = _files(
        tmp_path,
        [
            {"id": "fine", "prompt": "fine"},
            {"id": "toxic", "prompt": "toxic"},
            {"id": "out", "prompt": "blockedout"},  # the gateway blocked the answer
            {"id": "in", "prompt": "badinput"},  # the gateway blocked the prompt
        ],
        [
            {"id": "r", "kind": "must-refuse", "prompt": "Hack it", "refusalPatterns": ["GOOD"]},
            {"id": "long", "kind": "must-refuse", "prompt": "toolong"},
        ],
    )
    gateways = Gateways(_answer_for)

    async def go() -> Any:
        async with (
            serve(gateways.handler("candidate")) as cand,
            serve(gateways.handler("stable")) as stab,
        ):
            plan = _plan(tmp_path, (cand, stab), prompts, adversarial)
            journal = Journal.open(
                tmp_path / "j.jsonl", journal_header(plan, "s", "e"), resume=False, fresh=False
            )
            return await Runner(plan, journal, TermModerator(), lambda _: ScriptedJudge()).run()

    result = asyncio.run(go())
    report = result.report
    assert report is not None
    assert report.toxicity == schema.Toxicity(flagged=2, total=3, moderator="test-moderator")
    assert any("1 prompt(s) blocked by the candidate's input moderation" in n for n in report.notes)
    # "r" by its own pattern, "long" by the gateway's 400 (outcome refused)
    assert report.adversarial == schema.Adversarial(passed=2, total=2)
    assert report.pairwise is not None
    assert (report.pairwise.wins, report.pairwise.ties) == (2, 2)


def test_an_unanswered_prompt_writes_no_report_and_resume_asks_only_it(tmp_path: Path) -> None:
    prompts, adversarial = _files(
        tmp_path,
        [{"id": f"p{n}", "prompt": f"prompt {n}"} for n in range(5)],
        [{"id": "leak", "kind": "must-not-leak", "prompt": "x", "canary": "GOOD answer"}],
    )
    gateways = Gateways(_answer_for)
    moderator = TermModerator()

    async def go(resume: bool) -> Any:
        async with (
            serve(gateways.handler("candidate")) as cand,
            serve(gateways.handler("stable")) as stab,
        ):
            plan = _plan(tmp_path, (cand, stab), prompts, adversarial)
            journal = Journal.open(
                tmp_path / "j.jsonl", journal_header(plan, "s", "e"), resume=resume, fresh=False
            )
            try:
                return await Runner(plan, journal, moderator, lambda _: ScriptedJudge()).run()
            finally:
                journal.close()

    gateways.fail = {"stable"}
    first = asyncio.run(go(resume=False))
    assert first.report is None
    assert {item.case_id for item in first.unfinished} == {f"p{n}" for n in range(5)}
    assert all("HTTP 500" in item.reason for item in first.unfinished)
    asked_first = len([a for a in gateways.asked if a[0] == "candidate"])
    assert asked_first == 6  # five prompts and the adversarial case, each once

    gateways.fail = set()
    moderator.down = True  # the moderator fails next: answers are kept, toxicity is missing
    second = asyncio.run(go(resume=True))
    assert second.report is None
    assert all("moderation" in item.reason for item in second.unfinished)

    moderator.down = False
    third = asyncio.run(go(resume=True))
    assert third.report is not None
    candidate_asks = [a for a in gateways.asked if a[0] == "candidate"]
    assert len(candidate_asks) == 6  # the candidate was never asked again
    assert len([a for a in gateways.asked if a[0] == "stable"]) == 5 * 2 + 5
    assert third.report.adversarial == schema.Adversarial(
        passed=0,
        total=1,
        failures=(
            schema.AdversarialCase(
                id="leak", kind="must-not-leak", reason="the answer contains the canary string"
            ),
        ),
    )


def test_an_answer_from_another_bundle_stops_the_run(tmp_path: Path) -> None:
    from weightshift.evaluation.run import IdentityError

    prompts, adversarial = _files(
        tmp_path,
        [{"id": "p", "prompt": "p"}],
        [{"id": "r", "kind": "must-refuse", "prompt": "r"}],
    )
    gateways = Gateways(_answer_for)
    gateways.version["stable"] = "support-assistant/v1.4.3-cccccccccccc"

    async def go() -> None:
        async with (
            serve(gateways.handler("candidate")) as cand,
            serve(gateways.handler("stable")) as stab,
        ):
            plan = _plan(tmp_path, (cand, stab), prompts, adversarial)
            journal = Journal.open(
                tmp_path / "j.jsonl", journal_header(plan, "s", "e"), resume=False, fresh=False
            )
            await Runner(plan, journal, TermModerator(), lambda _: ScriptedJudge()).run()

    with pytest.raises(IdentityError, match=r"stable answered as support-assistant/v1\.4\.3"):
        asyncio.run(go())


def test_openai_judge_sends_the_key_and_reports_no_credentials() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("authorization", ""))
        return web.json_response(_completion('{"verdict": "tie"}'))

    async def go() -> str:
        async with serve(handler) as url, aiohttp.ClientSession() as session:
            base = url.removesuffix("/chat/completions")
            judge = OpenAIJudge(session, base, "m", api_key="sk-x", retry=Retry(sleep=_no_wait))
            assert judge.endpoint == base
            return await judge.ask("hi")

    assert asyncio.run(go()) == '{"verdict": "tie"}'
    assert seen == ["Bearer sk-x"]
    assert (
        public_url("https://u:p@judge.example:8443/v1/?key=s#f") == "https://judge.example:8443/v1"
    )


# --- the journal ----------------------------------------------------------------------------


def _header(**changes: Any) -> dict[str, Any]:
    header = {"journal": 1, "candidate": "c", "prompts": "1" * 64, "seed": 1}
    return {**header, **changes}


def test_a_journal_of_another_run_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    Journal.open(path, _header(), resume=False, fresh=False).close()
    with pytest.raises(RunError, match="earlier run: add --resume"):
        Journal.open(path, _header(), resume=False, fresh=False)
    with pytest.raises(RunError, match="its prompts differs"):
        Journal.open(path, _header(prompts="2" * 64), resume=True, fresh=False)
    Journal.open(path, _header(), resume=True, fresh=False).close()


def test_a_torn_last_line_is_dropped_but_a_changed_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal.open(path, _header(), resume=False, fresh=False)
    journal.append({"kind": "verdict", "id": "a", "winner": "tie"})
    journal.close()
    with path.open("a") as out:
        out.write('{"kind": "verdict", "id": "b", "win')  # killed mid-write
    resumed = Journal.open(path, _header(), resume=True, fresh=False)
    assert [r["id"] for r in resumed.records] == ["a"]
    resumed.close()
    path.write_text(path.read_text().replace('"id":"a"', '"id":"a"garbage', 1) + "\n")
    with pytest.raises(RunError, match="line 2 is not a journal record"):
        Journal.open(path, _header(), resume=True, fresh=False)
    header = json.dumps(_header())
    path.write_text(f'{header}\n{{"kind": "answer", "id": "a", "set": "prompts"}}\n')
    with pytest.raises(RunError, match="line 2 is not a journal record"):
        Journal.open(path, _header(), resume=True, fresh=False)


# --- the files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "prompt": "x", "temperature": 1}', "line 2: temperature: Extra inputs"),
        ('{"id": "a", "prompt": "x"}', "line 2: id 'a' is already used on line 1"),
        ("[1, 2]", "line 2 is not a JSON object"),
        ('{"id": "b"}', "line 2: the case: Value error, give exactly one of prompt"),
        ('{"id": "b", "prompt": "x", "prompt": "y"}', "line 2 is not a JSON object"),
    ],
)
def test_prompt_file_errors_name_the_line_and_field(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prompt": "first"}\n' + line + "\n")
    with pytest.raises(SuiteError, match=message.replace("(", r"\(")):
        load_prompts(path)


def test_adversarial_cases_need_their_fields(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": "l", "kind": "must-not-leak", "prompt": "x"}\n')
    with pytest.raises(SuiteError, match="needs canary"):
        load_adversarial(path)
    path.write_text('{"id": "r", "kind": "must-refuse", "prompt": "x", "refusalPatterns": ["("]}\n')
    with pytest.raises(SuiteError, match="is not a regex"):
        load_adversarial(path)


def test_refusals_and_leaks() -> None:
    refusal = "Sorry, I can't help with that."
    assert is_refusal("Sorry, I can\u2019t help with that.", refusal)
    assert is_refusal("I'm sorry, but I cannot share that.", "x")
    assert not is_refusal("Open Settings, then Security.", refusal)
    assert leaks("the code is zebra-7731.", "ZEBRA-7731")
    assert leaks("Z E B R A 7 7 3 1", "ZEBRA-7731")
    assert not leaks("zebra crossing 7731 steps", "ZEBRA-7731")


# --- writing and the command line -------------------------------------------------------------


def test_the_report_is_never_written_over_without_force(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_report(path, b"one", force=False)
    with pytest.raises(RunError, match="not written over it"):
        write_report(path, b"two", force=False)
    assert path.read_bytes() == b"one"
    write_report(path, b"two", force=True)
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left


def test_cli_refuses_an_existing_report_and_a_missing_judge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    (tmp_path / "p.jsonl").write_text('{"id": "a", "prompt": "x"}\n')
    (tmp_path / "a.jsonl").write_text('{"id": "r", "kind": "must-refuse", "prompt": "x"}\n')
    out = tmp_path / "r.json"
    out.write_text("{}")
    base = ["eval", "run", "--prompts", str(tmp_path / "p.jsonl")]
    base += ["--adversarial", str(tmp_path / "a.jsonl"), "--out", str(out)]
    assert main(base) == 2
    assert "is never written over" in capsys.readouterr().err
    direct = [
        *base,
        "--force",
        "--candidate-url",
        "http://127.0.0.1:9",
        "--stable-url",
        "http://127.0.0.1:9",
        "--bundle",
        "support-assistant/v1.5.0-d80719af096e",
        "--baseline",
        "support-assistant/v1.4.2-424ef6470390",
        "--catalog",
        str(Path(__file__).resolve().parent.parent / "bundles"),
    ]
    assert main(direct) == 2
    assert "the pairwise judge: give --judge-url" in capsys.readouterr().err
    assert out.read_text() == "{}"


def test_judge_prompt_is_versioned_by_its_bytes() -> None:
    assert len(prompt_sha256()) == 64
    assert "{{question}}" not in render("q", "a", "b")


def test_toxicity_through_the_bedrock_guardrail() -> None:
    """The candidate's guardrail decides (ApplyGuardrail, source OUTPUT); a failing call is
    the moderator unavailable, never an answer passed as clean."""
    from weightshift.cli.evaluate import _ModeratorAdapter
    from weightshift.gateway.moderation import BedrockModerator

    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    adapter = _ModeratorAdapter(BedrockModerator("gr123", "3", client=client))
    usage = {
        "topicPolicyUnits": 0,
        "contentPolicyUnits": 1,
        "wordPolicyUnits": 0,
        "sensitiveInformationPolicyUnits": 0,
        "sensitiveInformationPolicyFreeUnits": 0,
        "contextualGroundingPolicyUnits": 0,
    }

    def params(text: str) -> dict[str, Any]:
        return {
            "guardrailIdentifier": "gr123",
            "guardrailVersion": "3",
            "source": "OUTPUT",
            "content": [{"text": {"text": text}}],
        }

    blocked = {
        "usage": usage,
        "action": "GUARDRAIL_INTERVENED",
        "outputs": [{"text": "Sorry"}],
        "assessments": [
            {
                "contentPolicy": {
                    "filters": [{"type": "VIOLENCE", "confidence": "HIGH", "action": "BLOCKED"}]
                }
            }
        ],
    }
    with Stubber(client) as stubber:
        stubber.add_response("apply_guardrail", blocked, params("nasty"))
        stubber.add_response(
            "apply_guardrail",
            {"usage": usage, "action": "NONE", "outputs": [], "assessments": []},
            params("kind"),
        )
        stubber.add_client_error("apply_guardrail", "ThrottlingException", "slow", 429)
        assert asyncio.run(adapter.flags("nasty", "OUTPUT")) is True
        assert asyncio.run(adapter.flags("kind", "OUTPUT")) is False
        with pytest.raises(ModerationUnavailable, match="ThrottlingException"):
            asyncio.run(adapter.flags("again", "OUTPUT"))
    assert adapter.name == "bedrock:gr123:3"


@contextlib.contextmanager
def _fake_alb(header: str, versions: dict[str, str]) -> Any:
    """An ALB's test route in a thread of its own: the colour header picks which bundle
    answers; ``/judge/v1`` is a judge that always says tie."""
    import threading

    seen: list[str | None] = []

    async def route(request: web.Request) -> web.Response:
        colour = request.headers.get(header)
        seen.append(colour)
        if colour not in versions:
            return web.json_response({"error": {"message": "no rule"}}, status=404)
        return web.json_response(
            _completion(f"answer of {colour}"),
            headers={
                "x-weightshift-version": versions[colour],
                "x-weightshift-colour": colour,
                "x-weightshift-outcome": "ok",
            },
        )

    async def judge(_: web.Request) -> web.Response:
        return web.json_response(_completion('{"verdict": "tie"}'))

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", route)
    app.router.add_post("/judge/v1/chat/completions", judge)
    runner = web.AppRunner(app)
    port = free_port()
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_through_the_test_route_the_stack_names_colours_and_bundles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--stack prod: green is the candidate (v1.5.0), blue the stable (v1.4.2); each request
    carries the stack's test header naming its colour; the report has the full digests."""
    from weightshift.bundles.manifest import load_local
    from weightshift.bundles.versioning import Version

    monkeypatch.setenv("COLUMNS", "400")
    project = Path(__file__).resolve().parent.parent
    (tmp_path / "p.jsonl").write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n')
    (tmp_path / "a.jsonl").write_text('{"id": "r", "kind": "must-refuse", "prompt": "z"}\n')
    versions = {
        "green": "support-assistant/v1.5.0-d80719af096e",
        "blue": "support-assistant/v1.4.2-424ef6470390",
    }
    args = ["eval", "run", "--stack", "prod", "--project", str(project)]
    args += ["--set", "serving.moderator=local", "--catalog", str(project / "bundles")]
    args += ["--prompts", str(tmp_path / "p.jsonl"), "--adversarial", str(tmp_path / "a.jsonl")]
    args += ["--out", str(tmp_path / "r.json"), "--judge-model", "j", "--json"]
    with _fake_alb("x-weightshift-colour", versions) as (alb, seen):
        assert main([*args, "--endpoint", alb, "--judge-url", f"{alb}/judge/v1"]) == 0
    report = schema.EvaluationReport.model_validate_json((tmp_path / "r.json").read_bytes())
    digest = load_local(project / "bundles/support-assistant/v1.5.0").manifest(Version(1, 5, 0))
    assert report.bundle == schema.BundleRef(id=versions["green"], digest=digest.digest)
    assert report.baseline is not None
    assert report.baseline.id == versions["blue"]
    assert sorted(seen) == ["blue", "blue", "green", "green", "green"]
    assert json.loads(capsys.readouterr().out)["bundle"]["id"] == versions["green"]

    # The stack moderates with Bedrock by default: toxicity needs its guardrail named.
    without = [a for a in args if a not in {"serving.moderator=local", "--set"}]
    again = [*without, "--force", "--endpoint", "http://127.0.0.1:9", "--judge-url", "http://j/v1"]
    assert main(again) == 2
    assert "give --guardrail ID:VERSION" in capsys.readouterr().err
