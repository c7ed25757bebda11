"""`weightshift bundle ...` end to end, as a user runs it, against a local S3 emulator server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.emulator import Emulator, artifact_bucket
from tests.test_bundle import make_publishable


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with artifact_bucket() as running:
        yield running


def ws(emulator: Emulator, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(emulator.env())
    return subprocess.run(
        [sys.executable, "-m", "weightshift.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_init_publish_list_show_verify_pull_diff(emulator: Emulator, tmp_path: Path) -> None:
    bucket = ["--bucket", emulator.bucket]
    bundle = tmp_path / "bundle"
    assert "Replace before publishing" in ok(
        ws(emulator, "bundle", "init", str(bundle), "--name", "triage-bot")
    )
    placeholders = ws(emulator, "bundle", "validate", str(bundle))
    assert placeholders.returncode == 1
    assert [line.split(": ")[0] for line in placeholders.stdout.splitlines()[:2]] == [
        "not publishable",
        "not publishable",
    ]
    assert "valid bundle of triage-bot" in placeholders.stdout
    make_publishable(bundle)
    assert "ready to publish" in ok(ws(emulator, "bundle", "validate", str(bundle)))

    first = json.loads(
        ok(ws(emulator, "bundle", "publish", str(bundle), "--version", "0.1.0", "--json", *bucket))
    )
    assert first["id"].startswith("triage-bot/v0.1.0-")
    assert first["blobsSkipped"] == 0
    assert first["bytesUploaded"] == first["bytesTotal"]

    (bundle / "prompt/system.txt").write_text("You triage support tickets. Be brief.\n")
    refused = ws(emulator, "bundle", "publish", str(bundle), "--version", "0.1.1", *bucket)
    assert refused.returncode == 2
    assert "needs at least MINOR" in " ".join(refused.stderr.split())
    assert "Traceback" not in refused.stderr

    dry = json.loads(
        ok(
            ws(
                emulator,
                "bundle",
                "publish",
                str(bundle),
                "--bump",
                "auto",
                "--dry-run",
                "--json",
                *bucket,
            )
        )
    )
    assert dry["requiredBump"] == "MINOR"
    assert dry["blobsToUpload"] == 1
    second_id = ok(
        ws(emulator, "bundle", "publish", str(bundle), "--bump", "auto", *bucket)
    ).strip()
    assert second_id.startswith("triage-bot/v0.2.0-")
    assert second_id == dry["id"]

    listing = ok(ws(emulator, "bundle", "list", "triage-bot", *bucket))
    assert [line.split()[0] for line in listing.splitlines()] == ["id", first["id"], second_id]

    shown = json.loads(ok(ws(emulator, "bundle", "show", second_id, "--json", *bucket)))
    assert shown["metadata"]["name"] == "triage-bot"
    assert "prompt/system.txt" in [f["path"] for f in shown["files"]]

    assert ok(ws(emulator, "bundle", "verify", second_id, *bucket)).strip().endswith(": OK")

    dest = tmp_path / "pulled"
    ok(ws(emulator, "bundle", "pull", second_id, str(dest), *bucket))
    for path in bundle.rglob("*"):
        if path.is_file():
            assert (dest / path.relative_to(bundle)).read_bytes() == path.read_bytes()

    diff = ok(ws(emulator, "bundle", "diff", first["id"], second_id, *bucket))
    assert "~ system-prompt: prompt/system.txt" in diff
    assert "required bump: MINOR" in diff


def test_bad_input_is_one_paragraph_and_exit_2(emulator: Emulator, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metadata.json").write_text("{")
    result = ws(
        emulator, "bundle", "publish", str(bad), "--version", "1.0.0", "--bucket", emulator.bucket
    )
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "metadata.json: not valid JSON" in message
    assert "model/weights/: missing or empty" in message
    assert "nothing was written" in message
    assert "Traceback" not in result.stderr
    no_bucket = ws(emulator, "bundle", "list", "x")
    assert no_bucket.returncode == 2
    assert "pass --bucket NAME or set WEIGHTSHIFT_BUCKET" in no_bucket.stderr
    malformed = ws(emulator, "bundle", "verify", "triage-bot/1.0", "--bucket", emulator.bucket)
    assert malformed.returncode == 2
    assert "is not a bundle id" in malformed.stderr


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    """stdout as JSON: all of it, nothing else (progress and notes are on stderr)."""
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def test_every_json_output_is_json_only_and_versions_resolve_without_their_hash(
    emulator: Emulator, tmp_path: Path
) -> None:
    bucket = ["--bucket", emulator.bucket]
    bundle = tmp_path / "bundle"
    ok(ws(emulator, "bundle", "init", str(bundle), "--name", "json-bot"))
    checked = json_of(ws(emulator, "bundle", "validate", str(bundle), "--json"))
    assert (checked["valid"], checked["publishable"]) == (True, False)
    assert {p["kind"] for p in checked["problems"]} == {"not publishable"}
    refused = ws(emulator, "bundle", "publish", str(bundle), "--bump", "auto", *bucket)
    assert refused.returncode == 2
    assert "is not publishable" in refused.stderr
    make_publishable(bundle)
    assert json_of(ws(emulator, "bundle", "validate", str(bundle), "--json"))["problems"] == []
    dry_run = ["publish", str(bundle), "--bump", "auto", "--dry-run", "--json", *bucket]
    dry = json_of(ws(emulator, "bundle", *dry_run))
    assert (dry["id"][:16], dry["base"], dry["hotfix"]) == ("json-bot/v1.0.0-", None, False)
    assert dry["blobsToUpload"] + dry["blobsPresent"] == 10  # other tests' blobs may be there
    first = json_of(
        ws(emulator, "bundle", "publish", str(bundle), "--bump", "minor", "--json", *bucket)
    )
    assert first["id"].startswith("json-bot/v0.1.0-")
    (bundle / "config/generation.json").write_text(
        '{"temperature": 0.3, "top_p": 0.9, "max_tokens": 1024, "stop": []}\n'
    )
    second = json_of(
        ws(emulator, "bundle", "publish", str(bundle), "--bump", "auto", "--json", *bucket)
    )
    assert second["id"].startswith("json-bot/v0.1.1-")

    assert [
        row["id"] for row in json_of(ws(emulator, "bundle", "list", "json-bot", "--json", *bucket))
    ] == [
        first["id"],
        second["id"],
    ]
    shown = ws(emulator, "bundle", "show", "json-bot/v0.1.1", "--json", *bucket)
    assert json_of(shown)["id"] == second["id"]
    assert shown.stderr == f"json-bot/v0.1.1 is {second['id']}\n"
    verified = json_of(ws(emulator, "bundle", "verify", "json-bot/v0.1.1", "--json", *bucket))
    assert verified == {"id": second["id"], "ok": True, "problems": []}
    pulled = json_of(
        ws(
            emulator,
            "bundle",
            "pull",
            "json-bot/v0.1.1",
            str(tmp_path / "pulled"),
            "--json",
            *bucket,
        )
    )
    assert (pulled["id"], pulled["bytesDownloaded"]) == (second["id"], pulled["bytes"])

    changed = json_of(
        ws(emulator, "bundle", "diff", "json-bot/v0.1.0", second["id"], "--json", *bucket)
    )
    assert changed["requiredBump"] == "PATCH"
    (generation,) = changed["parts"]
    assert generation["files"][0]["values"] == [{"key": "temperature", "before": 0.7, "after": 0.3}]
    text = ok(ws(emulator, "bundle", "diff", "json-bot/v0.1.0", str(bundle), *bucket))
    assert "~ generation: config/generation.json (" in text
    assert "    temperature: 0.7 \u2192 0.3" in text
    assert "required bump: PATCH" in text


def test_what_people_get_wrong_is_exit_2_and_one_paragraph(
    emulator: Emulator, tmp_path: Path
) -> None:
    bucket = ["--bucket", emulator.bucket]
    for args, expected in (
        (["list", "Json_Bot"], "'Json_Bot' is not a model name: lowercase letters"),
        (["list", "json-bot/v0.1.0"], "is not a model name"),
        (
            ["diff", str(tmp_path / "missing"), str(tmp_path / "missing")],
            f"{tmp_path / 'missing'} is not a folder, and not a published bundle either",
        ),
        (
            ["show", "json-bot/v1"],
            "'json-bot/v1' is not a bundle id: expected name/vMAJOR.MINOR.PATCH",
        ),
        (
            ["pull", "json-bot/v9.0.0", str(tmp_path / "x")],
            "json-bot/v9.0.0 is not published in bucket",
        ),
        (["validate", str(tmp_path / "missing")], "is not a folder: give a bundle's folder"),
        (["publish", str(tmp_path), "--bump", "auto", "--version", "1.0.0"], "Give exactly one of"),
    ):
        result = ws(emulator, "bundle", *args, *([] if args[0] == "validate" else bucket))
        assert result.returncode == 2, (args, result.stderr)
        assert result.stdout == ""
        assert result.stderr.startswith("weightshift bundle: error: ")
        assert expected in " ".join(result.stderr.split()), result.stderr
        assert "Traceback" not in result.stderr


def test_pull_fills_an_empty_folder_and_refuses_one_with_files(
    emulator: Emulator, tmp_path: Path
) -> None:
    bucket = ["--bucket", emulator.bucket]
    bundle = tmp_path / "bundle"
    ok(ws(emulator, "bundle", "init", str(bundle), "--name", "empty-dir-bot"))
    make_publishable(bundle)
    ok(ws(emulator, "bundle", "publish", str(bundle), "--bump", "auto", *bucket))
    mounted = tmp_path / "volume"
    mounted.mkdir()
    pulled = ok(ws(emulator, "bundle", "pull", "empty-dir-bot/v1.0.0", str(mounted), *bucket))
    assert pulled.startswith("empty-dir-bot/v1.0.0-")
    assert (mounted / "prompt/system.txt").read_bytes() == (
        bundle / "prompt/system.txt"
    ).read_bytes()
    refused = ws(emulator, "bundle", "pull", "empty-dir-bot/v1.0.0", str(mounted), *bucket)
    assert refused.returncode == 2
    assert "already exists and is not an empty folder" in " ".join(refused.stderr.split())
