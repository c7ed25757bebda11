"""What the command line prints (issue 11): paragraphs that keep identifiers whole, tables
that fit, plan diffs with values, Markdown, JSON only on stdout, --version, completion,
Ctrl-C, and errors for files it cannot write."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import PROJECT
from weightshift import cli
from weightshift.cli import EXIT_INTERRUPTED, main
from weightshift.cli import preview as preview_commands
from weightshift.console import paragraph, table_text
from weightshift.preview.plan import Plan, build_plan, render, render_markdown

IDS = [
    "support-assistant/v1.5.0-d80719af096e",
    "arn:aws:kms:us-east-1:210987654321:key/5b0f3c1e-8d2a-4f6b-9c7e-1a2b3c4d5e6f",
    "https://docs.aws.amazon.com/elasticloadbalancing/latest/application/load-balancer-listeners.html",
    "s3://support-assistant-artifacts-210987654321-use1/manifests/support-assistant/v1.5.0.json",
    "weightshift:rollout.capacity.replicaRequestsPerSecond",
]


@pytest.fixture(scope="module")
def prod_plan() -> Plan:
    return build_plan(PROJECT, "prod")


@pytest.fixture(scope="module")
def plan_json(prod_plan: Plan) -> dict[str, object]:
    return prod_plan.to_json()


@settings(max_examples=60, deadline=None)
@given(
    columns=st.integers(min_value=40, max_value=200),
    words=st.lists(st.sampled_from(["the", "bundle", "is", "not", "in", "and", "cannot", "x"])),
    picks=st.lists(st.sampled_from(IDS), min_size=1, max_size=3),
)
def test_an_identifier_never_breaks_across_lines(
    columns: int, words: list[str], picks: list[str]
) -> None:
    message = " ".join([*words[: len(words) // 2], *picks, *words[len(words) // 2 :], "."])
    text = paragraph(f"weightshift bundle pull: error: {message}", columns)
    tokens = text.split()
    for identifier in picks:
        assert identifier in tokens
    for line in text.splitlines():
        # A line longer than the width holds exactly one word: an identifier that overflows.
        assert len(line) < columns or len(line.split()) <= 2


def test_laid_out_lines_are_kept_as_written() -> None:
    message = "Pulumi.x.yaml, line 3, column 4: not valid YAML.\n      b: c\n       ^"
    assert paragraph(message, 60).splitlines()[1:] == ["      b: c", "       ^"]


def test_a_yaml_error_names_the_file_and_shows_the_line_with_a_caret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "Pulumi.yaml").write_text((PROJECT / "Pulumi.yaml").read_text())
    (tmp_path / "__main__.py").write_text("")
    (tmp_path / "Pulumi.bad.yaml").write_text("config:\n  weightshift:model: [a\n  b: c\n")
    assert main(["plan", "--project", str(tmp_path), "--stack", "bad"]) == 2
    err = capsys.readouterr().err
    assert "Pulumi.bad.yaml, line 3, column 4: not valid YAML" in " ".join(err.split())
    lines = err.splitlines()
    caret = next(i for i, line in enumerate(lines) if line.strip() == "^")
    assert lines[caret - 1].strip() == "b: c"
    assert lines[caret].index("^") == lines[caret - 1].index("b: c") + 1  # under the ':'


@pytest.mark.parametrize("columns", [40, 60, 100, 200])
def test_tables_fit_the_width_and_keep_ids_whole(columns: int) -> None:
    text = table_text(
        ["id", "published", "files"],
        [[IDS[0], "2026-11-27T09:12:04+00:00", "27 files, 1,073,741,824 bytes in total"]],
        width_=columns,
        no_wrap=["id"],
    )
    assert IDS[0] in text
    widest = max(len(line) for line in text.splitlines())
    assert widest <= max(columns, len(IDS[0]) + 4)


def test_plan_shows_changed_values_not_only_keys(plan_json: dict[str, object]) -> None:
    stages = plan_json["stages"]
    assert isinstance(stages, list)
    stage1 = {c["name"]: c for c in stages[1]["changes"]}
    assert stage1["rollback"]["summary"] == ["actionsEnabled false → true"]
    assert stage1["rollback"]["values"] == [
        {"path": "actionsEnabled", "before": False, "after": True}
    ]
    assert stage1["traffic-https"]["summary"] == [
        "weights blue/green 999/0 → 990/10",
        "stickiness off → 900 s",
    ]
    stage2 = {c["name"]: c for c in stages[2]["changes"]}
    assert stage2["traffic-https"]["summary"] == ["weights blue/green 990/10 → 950/50"]
    stage3 = {c["name"]: c for c in stages[3]["changes"]}
    assert stage3["green"]["summary"] == ["stage canary 2 → canary 3"]
    stage4 = {c["name"]: c for c in stages[4]["changes"]}
    assert stage4["green"]["summary"] == ["stage canary 3 → canary 4", "replicas 2 → 4"]


@pytest.mark.parametrize("columns", [100, 160])
def test_plan_text_fits_the_terminal(prod_plan: Plan, columns: int) -> None:
    text = render(prod_plan, columns)
    table = text.split("\n\n")[1]
    assert max(len(line) for line in table.splitlines()) <= columns
    assert "actionsEnabled false → true" in " ".join(text.split())
    assert "990/10 → 950/50" in " ".join(text.split())


def test_plan_markdown_is_a_table_for_a_pull_request(prod_plan: Plan) -> None:
    text = render_markdown(prod_plan)
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert rows[0].startswith("|   | stage | % blue/green | pods b/g | GPUs b/g |")
    assert re.fullmatch(r"\|(---\|)+", rows[1])
    assert len(rows) == 2 + 6
    assert "weights blue/green 999/0 → 990/10" in rows[3]
    assert "<br>" in rows[3]  # several changes in one cell


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert re.fullmatch(r"weightshift \d+\.\d+\.\d+\n", capsys.readouterr().out)


def test_shell_completion_completes_commands_and_options(tmp_path: Path) -> None:
    """As bash's hook runs it: the command with argcomplete's environment, in its own
    process (argcomplete answers and exits before any command runs)."""

    def complete(line: str) -> set[str]:
        out = tmp_path / "completions"
        env = {
            "PATH": "/usr/bin:/bin",
            "_ARGCOMPLETE": "1",
            "_ARGCOMPLETE_IFS": "\n",
            "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
            "COMP_LINE": line,
            "COMP_POINT": str(len(line)),
        }
        subprocess.run(
            [sys.executable, "-m", "weightshift.cli"], env=env, check=True, capture_output=True
        )
        return set(out.read_text().split("\n"))

    assert {"plan", "policy"} <= complete("weightshift p")
    assert {"--json", "--markdown", "--chart"} <= complete("weightshift plan --")
    assert "--bump" in complete("weightshift bundle publish --b")
    source = Path(cli.__file__).read_text()
    assert source.startswith("# PYTHON_ARGCOMPLETE_OK")  # the global hook looks for it


def test_synth_out_to_a_missing_folder_is_one_paragraph(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope" / "graph.json"
    assert main(["synth", "--project", str(PROJECT), "--out", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "the folder" in err
    assert f"{tmp_path / 'nope'} does not exist" in " ".join(err.split())
    assert "Traceback" not in err
    assert not missing.parent.exists()


def test_plan_chart_refuses_an_unknown_format_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "--project", str(PROJECT), "--chart", str(tmp_path / "x.gif")]) == 2
    assert "must be .png or .svg" in " ".join(capsys.readouterr().err.split())


def test_ctrl_c_exits_130_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(_: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(preview_commands, "cmd_plan", interrupted)
    assert main(["plan"]) == EXIT_INTERRUPTED
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "weightshift plan: interrupted; nothing more was done.\n"


def test_plan_json_is_json_only_on_stdout() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "weightshift.cli", "plan", "--json"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
        env={"WEIGHTSHIFT_SERIAL": "1", "PATH": "/usr/bin:/bin"},
    )
    document = json.loads(result.stdout)
    assert document["extraGpuHours"]["ratio"] is not None
