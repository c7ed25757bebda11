"""The divergence gate (weightshift/gates/shadow.py) on shadow reports built from pair
records whose divergence is known; `weightshift gates shadow`; and `rollout promote` from
shadow stage 1 to canary stage 1 on the fake Automation API backend of tests/test_rollout.py,
with the stack's shadow records in (moto) S3: refused while the gate fails or is
inconclusive, allowed (and recorded) when it passes."""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.alb_world import World
from tests.conftest import PROJECT
from tests.test_rollout import NOW, FakeBackend, PassingMetrics, ok_alarms
from tests.test_rollout_gate import Recording, at_stage, decisions
from weightshift.cli import main
from weightshift.config.rollout import ShadowGate
from weightshift.evidence.sequential import Decision
from weightshift.gates.shadow import ShadowEvidenceError, check_comparison, decide
from weightshift.rollout import commands as rollout_module
from weightshift.rollout.commands import AwsView, Rollout, RolloutError
from weightshift.shadow import synthetic
from weightshift.shadow.pipeline import Options, report_from
from weightshift.shadow.report import Figure, Report, Skipped
from weightshift.stages import Strategy, is_legal_move, next_step

STABLE = "support-assistant/v1.4.2-424ef6470390"  # Pulumi.prod.yaml: blue
CANDIDATE = "support-assistant/v1.5.0-d80719af096e"  # green, the candidate
STARTED = NOW - timedelta(hours=25)  # shadow stage 1 bakes 24 h


def pairs(
    count: int,
    *,
    candidate_refusal: Callable[[int], bool] = lambda n: False,
    candidate_text: Callable[[int], str] = lambda n: f"answer {n}",
    start: Any = None,
) -> list[dict[str, Any]]:
    """``count`` pairs of the stack's two versions, a second apart from ``start`` (an hour
    before NOW), equal latency; the candidate's refusals and answers as given."""
    when = start or NOW - timedelta(hours=1)
    found = []
    for n in range(count):
        record = synthetic.record(
            n,
            stable=synthetic.side(text=f"answer {n}", latency_ms=100.0, tokens_out=4),
            candidate=synthetic.side(
                text=candidate_text(n),
                latency_ms=100.0,
                tokens_out=4,
                refusal=candidate_refusal(n),
            ),
            when=when + timedelta(seconds=n),
        )
        found.append({**record, "stable_version": STABLE, "candidate_version": CANDIDATE})
    return found


def report_for(tmp_path: Path, records: list[dict[str, Any]]) -> Report:
    synthetic.write_jsonl_gz(tmp_path / "records" / "batch.jsonl.gz", records)
    return report_from(Options(records=str(tmp_path / "records"), sample=0, divergent=0))


LIMITS = ShadowGate(min_pairs=500)


@pytest.fixture(scope="module")
def alike(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """1,000 pairs whose answers, refusals and latencies are the same."""
    return report_for(tmp_path_factory.mktemp("alike"), pairs(1000))


def by_name(gate: Any) -> dict[str, Any]:
    return {c.name: c for c in gate.criteria}


def test_identical_answers_pass_every_criterion(alike: Report) -> None:
    gate = decide(alike, LIMITS)
    assert gate.decision is Decision.PASS
    found = by_name(gate)
    assert found["pairs"].pairs == 1000
    assert found["refusal_delta"].estimate == 0
    # Newcombe's interval of 0 of 1,000 against 0 of 1,000 is within the 0.005 ceiling.
    assert found["block_delta"].interval[1] < 0.005
    assert found["p99_latency_ratio"].estimate == pytest.approx(1.0)
    assert found["candidate_failures"].estimate == 0
    assert found["exact_match"].note.startswith("not applicable")
    assert found["judge_win_rate"].note.startswith("not applicable")
    assert gate.to_json()["needed"] is None


def test_more_refusals_fail_and_say_which(tmp_path: Path) -> None:
    report = report_for(tmp_path, pairs(1000, candidate_refusal=lambda n: n % 5 == 0))
    gate = decide(report, LIMITS)
    assert gate.decision is Decision.FAIL
    (failing,) = gate.failing()
    assert failing.name == "refusal_delta"
    assert failing.estimate == pytest.approx(0.2)
    assert failing.interval is not None
    low = failing.interval[0]
    assert low is not None
    assert low > LIMITS.max_refusal_delta
    assert "refusal_delta: fail; estimate 0.2" in gate.render()


def test_too_few_pairs_are_inconclusive_with_the_pairs_still_needed(alike: Report) -> None:
    gate = decide(alike, ShadowGate(min_pairs=5000))
    assert gate.decision is Decision.INCONCLUSIVE
    assert [c.name for c in gate.undecided()] == ["pairs"]
    assert gate.needed == 4000
    assert "about 4,000 more pairs would decide (pairs)" in gate.wait_text()


def test_a_straddling_interval_is_inconclusive_and_projects_the_pairs_needed(
    alike: Report,
) -> None:
    """A refusal delta of 0.01 in [0.004, 0.016] against a ceiling of 0.013, inside it: the
    upper bound must come from 0.006 above the estimate to under 0.003 above it."""
    figures = dict(alike.figures)
    figures["refusal_delta"] = Figure(
        value=0.01, low=0.004, high=0.016, method="newcombe-paired", pairs=1000
    )
    report = alike.model_copy(update={"figures": figures})
    gate = decide(report, ShadowGate(min_pairs=500, max_refusal_delta=0.013))
    criterion = by_name(gate)["refusal_delta"]
    assert criterion.decision is Decision.INCONCLUSIVE
    # half-width 0.006, gap 0.003: at 1000 * (0.006 / 0.003)^2 = 4000 pairs the bound
    # touches the ceiling (still undecided), so one more: 3001 more than now.
    assert criterion.needed == 3001
    assert gate.needed == 3001
    # An estimate on the limit: no number of pairs would decide.
    gate = decide(report, ShadowGate(min_pairs=500, max_refusal_delta=0.01))
    assert by_name(gate)["refusal_delta"].needed is None
    assert gate.needed is None
    assert "no count of pairs would decide" in gate.wait_text()


def test_exact_match_floor_when_set_decides_on_the_wilson_interval(tmp_path: Path) -> None:
    report = report_for(
        tmp_path, pairs(1000, candidate_text=lambda n: "same" if n % 2 else f"answer {n}")
    )
    exact = report.figures["exact_match"]
    assert isinstance(exact, Figure)
    assert exact.value == pytest.approx(0.5)
    assert decide(report, ShadowGate(min_pairs=500, min_exact_match=0.4)).decision is (
        Decision.PASS
    )
    assert (
        by_name(decide(report, ShadowGate(min_pairs=500, min_exact_match=0.6)))[
            "exact_match"
        ].decision
        is Decision.FAIL
    )
    straddling = by_name(decide(report, ShadowGate(min_pairs=500, min_exact_match=0.51)))[
        "exact_match"
    ]
    assert straddling.decision is Decision.INCONCLUSIVE
    # The Wilson interval at 0.5 first excludes 0.51 near 9,600 trials.
    assert 8_000 < straddling.needed + 1000 < 11_000


def test_the_judge_decides_only_where_it_ran(alike: Report) -> None:
    figures = dict(alike.figures)
    figures["judge_win_rate"] = Figure(
        value=0.3, low=0.25, high=0.35, method="bootstrap-mean", pairs=300
    )
    gate = decide(alike.model_copy(update={"figures": figures}), LIMITS)
    judged = by_name(gate)["judge_win_rate"]
    assert (judged.decision, judged.unit) == (Decision.FAIL, "judged pairs")
    figures["judge_win_rate"] = Skipped(skipped="no pair keeps its text")
    gate = decide(alike.model_copy(update={"figures": figures}), LIMITS)
    assert by_name(gate)["judge_win_rate"].note == "not applicable: no pair keeps its text"


def test_an_unbounded_p99_asks_for_the_answers_an_upper_order_statistic_needs(
    alike: Report,
) -> None:
    figures = dict(alike.figures)
    figures["p99_latency_ratio"] = Figure(
        value=1.0, low=0.8, high=None, method="order-statistic-ratio-bonferroni", pairs=100
    )
    criterion = by_name(decide(alike.model_copy(update={"figures": figures}), LIMITS))[
        "p99_latency_ratio"
    ]
    assert criterion.decision is Decision.INCONCLUSIVE
    # At 97.5 % (each colour's half), the p99's upper rank needs n with 0.99^n <= 0.0125.
    assert criterion.needed == math.ceil(math.log(0.0125) / math.log(0.99)) - 100


def test_candidate_failures_count_against_it_though_other_figures_skip_them(
    tmp_path: Path,
) -> None:
    records = pairs(1000)
    for record in records[:100]:
        record["candidate"] = synthetic.side(outcome="timeout", status=504, latency_ms=None)
    gate = decide(report_for(tmp_path, records), LIMITS)
    failures = by_name(gate)["candidate_failures"]
    assert (failures.decision, failures.estimate) == (Decision.FAIL, 0.1)


def test_a_report_about_other_versions_or_too_narrow_is_not_evidence(alike: Report) -> None:
    check_comparison(alike, model="support-assistant", stable=STABLE, candidate=CANDIDATE)
    with pytest.raises(ShadowEvidenceError, match="its candidate version is"):
        check_comparison(
            alike, model="support-assistant", stable=STABLE, candidate="support-assistant/x-1"
        )
    narrow = alike.model_copy(update={"confidence": 0.8})
    with pytest.raises(ShadowEvidenceError, match="at 80% confidence"):
        check_comparison(narrow, model="support-assistant", stable=STABLE, candidate=CANDIDATE)


def test_only_shadow_1_to_canary_1_moves_between_strategies() -> None:
    assert next_step(Strategy.SHADOW, 1) == (Strategy.CANARY, 1)
    assert next_step(Strategy.SHADOW, 0) == (Strategy.SHADOW, 1)
    assert next_step(Strategy.CANARY, 5) is None
    assert is_legal_move(Strategy.SHADOW, 1, Strategy.CANARY, 1)
    assert not is_legal_move(Strategy.SHADOW, 1, Strategy.CANARY, 2)
    assert not is_legal_move(Strategy.SHADOW, 0, Strategy.CANARY, 1)
    assert not is_legal_move(Strategy.CANARY, 1, Strategy.SHADOW, 1)
    assert not is_legal_move(Strategy.SHADOW, 1, Strategy.BLUE_GREEN, 1)


# --- `weightshift gates shadow` ---------------------------------------------------------


def gates_shadow(*args: str) -> int:
    return main(["gates", "shadow", "--project", str(PROJECT), *args])


def test_gates_shadow_exits_by_the_decision(
    tmp_path: Path, alike: Report, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "report.json"
    path.write_text(alike.model_dump_json(by_alias=True), encoding="utf-8")
    assert gates_shadow("--report", str(path), "--set", "rollout.shadowGate.minPairs=500") == 0
    assert capsys.readouterr().out.startswith("shadow gate: PASS (1,000 pairs")
    assert gates_shadow("--report", str(path), "--json") == 3  # default minPairs 10,000
    document = json.loads(capsys.readouterr().out)
    assert (document["decision"], document["needed"]) == ("inconclusive", 9000)
    folder = tmp_path / "failing"
    synthetic.write_jsonl_gz(
        folder / "b.jsonl.gz", pairs(1000, candidate_refusal=lambda n: n % 5 == 0)
    )
    args = ("--records", str(folder), "--since", "2026-11-25T00:00:00Z")
    assert gates_shadow(*args, "--set", "rollout.shadowGate.minPairs=500") == 1
    assert "refusal_delta: fail" in capsys.readouterr().out


def test_gates_shadow_refuses_what_is_not_evidence(
    tmp_path: Path, alike: Report, capsys: pytest.CaptureFixture[str]
) -> None:
    other = alike.model_copy(
        update={"comparison": alike.comparison.model_copy(update={"stable_version": "x/y-1"})}
    )
    path = tmp_path / "other.json"
    path.write_text(other.model_dump_json(by_alias=True), encoding="utf-8")
    assert gates_shadow("--report", str(path)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "not evidence for this rollout: its stable version is 'x/y-1'" in err
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"schema": 1}', encoding="utf-8")
    assert gates_shadow("--report", str(garbage)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--report {garbage}: not a shadow report" in err
    assert gates_shadow("--report", str(tmp_path / "missing.json")) == 2
    assert "No such file" in capsys.readouterr().err


# --- `rollout promote` from shadow stage 1 -------------------------------------------------


@pytest.fixture
def backend(world: World) -> Recording:
    found = Recording(AwsView(), world)
    ok_alarms(found)
    return found


def shadow_bucket(backend: FakeBackend, world: World, records: list[dict[str, Any]]) -> str:
    """The stack's shadow bucket (as it exports it) holding ``records`` where the stable
    gateways write them."""
    exported = backend.outputs()["shadowRecords"]
    assert exported["prefixes"] == ["shadow", "shadow-text"]
    bucket = str(exported["bucket"])
    world.s3.create_bucket(Bucket=bucket)
    lines = "\n".join(json.dumps(r) for r in records) + "\n"
    key = "shadow/model=support-assistant/date=2026-11-25/hour=11/a-b-c.jsonl.gz"
    world.s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(lines.encode()))
    return bucket


def at_shadow(backend: Recording, **gate: Any) -> None:
    at_stage(backend, 1, STARTED, strategy="shadow", shadowGate={"minPairs": 500, **gate})


def rollout(backend: FakeBackend) -> Rollout:
    return Rollout("prod", backend, AwsView(metrics=PassingMetrics()), now=lambda: NOW)


def test_promote_from_shadow_is_refused_while_the_shadow_gate_fails(
    backend: Recording, world: World
) -> None:
    at_shadow(backend)
    shadow_bucket(backend, world, pairs(1000, candidate_refusal=lambda n: n % 5 == 0))
    with pytest.raises(RolloutError) as refused:
        rollout(backend).promote()
    message = " ".join(str(refused.value).split())
    assert message.startswith(
        "not promoting to canary stage 1: the shadow gate failed (1,000 pairs): refusal_delta"
    )
    assert "`weightshift rollout abort --reason 'shadow gate failed'`" in message
    assert backend.writes == []
    assert backend.values["weightshift:rollout"]["strategy"] == "shadow"
    ((key, document),) = decisions(world).items()
    assert key.endswith("-stage1-fail.json")
    assert (document["action"], document["nextStrategy"]) == ("refused", "canary")
    assert document["shadowGate"]["decision"] == "fail"
    # The window the records were read over: from the stage's start to now.
    assert document["shadowGate"]["window"] == {
        "since": "2026-11-24T11:00:00.000Z",
        "until": "2026-11-25T12:00:00.000Z",
    }


def test_promote_from_shadow_is_refused_while_the_shadow_gate_is_inconclusive(
    backend: Recording, world: World
) -> None:
    at_shadow(backend, minPairs=3000)
    shadow_bucket(backend, world, pairs(1000))
    with pytest.raises(RolloutError) as refused:
        rollout(backend).promote()
    message = " ".join(str(refused.value).split())
    assert message.startswith(
        "not promoting to canary stage 1: the shadow gate is inconclusive on 1,000 pairs: "
        "about 2,000 more pairs would decide (pairs)"
    )
    assert backend.writes == []
    assert decisions(world) == {}


def test_promote_from_shadow_moves_to_canary_1_when_the_gate_passes_and_records_it(
    backend: Recording, world: World
) -> None:
    at_shadow(backend)
    shadow_bucket(backend, world, pairs(1000))
    said = rollout(backend).promote()
    assert said.startswith("promoted to canary stage 1: ")
    assert "shadow gate passed on 1,000 pairs" in said
    config = backend.values["weightshift:rollout"]
    assert (config["strategy"], config["stage"]) == ("canary", 1)
    weights = backend.graph.outputs["rollout"]["weights"]
    assert (weights["green"], weights["mirror"]) == (10, 0)  # 1 %, no shadowSample
    ((key, document),) = decisions(world).items()
    assert key.endswith("-stage1-pass.json")
    assert (document["action"], document["shadowGate"]["pairs"]) == ("promoted", 1000)


def test_promote_reads_a_given_report_and_refuses_one_about_other_versions(
    backend: Recording, world: World, tmp_path: Path, alike: Report
) -> None:
    at_shadow(backend)
    path = tmp_path / "report.json"
    other = alike.model_copy(
        update={"comparison": alike.comparison.model_copy(update={"candidate_version": None})}
    )
    path.write_text(other.model_dump_json(by_alias=True), encoding="utf-8")
    with pytest.raises(RolloutError, match="the candidate answered no copy"):
        rollout(backend).promote(shadow_report=path)
    assert backend.writes == []
    path.write_text(alike.model_dump_json(by_alias=True), encoding="utf-8")
    assert rollout(backend).promote(shadow_report=path).startswith("promoted to canary stage 1")


def test_a_shadow_report_is_refused_where_no_strategy_moves(backend: Recording) -> None:
    at_stage(backend, 2, NOW - timedelta(hours=5))
    with pytest.raises(RolloutError, match="--shadow-report decides only the move"):
        rollout(backend).promote(shadow_report=Path("report.json"))


def test_dry_run_shows_the_shadow_gate_and_the_move(
    backend: Recording, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    at_shadow(backend, minPairs=3000)
    shadow_bucket(backend, world, pairs(1000))
    preview = rollout(backend).preview_promotion(lambda before, after, record: [after])
    assert preview.refusal is not None
    assert preview.refusal.startswith("the shadow gate is inconclusive: about 2,000 more pairs")
    text = preview.shadow_text()
    assert text is not None
    assert text.startswith("shadow gate: INCONCLUSIVE (1,000 pairs")
    (after,) = preview.changes
    assert after["weightshift:rollout"]["strategy"] == "canary"
    assert backend.writes == []
    assert decisions(world) == {}
    status = rollout(backend).status()
    assert status.to_json()["nextStrategy"] == "canary"
    assert "promote to canary stage 1: ready (and only if the shadow gate passes)" in (
        status.render()
    )


def test_the_promote_command_refuses_with_exit_2(
    backend: Recording,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    at_shadow(backend)
    shadow_bucket(backend, world, pairs(1000, candidate_refusal=lambda n: n % 5 == 0))
    monkeypatch.setattr(rollout_module, "AutomationBackend", lambda project, stack: backend)
    monkeypatch.setattr(rollout_module, "AwsView", lambda **_: AwsView(metrics=PassingMetrics()))
    monkeypatch.setattr(
        rollout_module,
        "Rollout",
        lambda stack, backend, aws: Rollout(stack, backend, aws, now=lambda: NOW),
    )
    assert main(["rollout", "promote", "--project", str(PROJECT)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the shadow gate failed (1,000 pairs): refusal_delta: fail" in err
    assert backend.values["weightshift:rollout"]["strategy"] == "shadow"
