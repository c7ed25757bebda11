"""Bundle layout, schemas, manifests and bump rules (no cloud)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from weightshift.bundle import (
    BundleError,
    Manifest,
    diff,
    hash_files,
    init_bundle,
    load_local,
    sha256_file,
    validate,
)
from weightshift.versioning import Bump, BundleId, Version


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    init_bundle(root, "support-assistant")
    return root


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def manifest(root: Path, version: str = "1.0.0") -> Manifest:
    return load_local(root).manifest(Version.parse(version))


def test_the_skeleton_is_a_valid_bundle(bundle: Path) -> None:
    files, metadata, problems = validate(bundle)
    assert problems == []
    assert metadata is not None
    assert metadata.name == "support-assistant"
    assert "model/weights/model.safetensors" in files


def test_init_refuses_a_folder_with_content(bundle: Path) -> None:
    with pytest.raises(BundleError, match="not an empty folder"):
        init_bundle(bundle, "support-assistant")


def test_every_problem_is_listed_at_once_with_its_path(bundle: Path) -> None:
    (bundle / "prompt/system.txt").unlink()
    (bundle / "config/generation.json").write_text('{"temperature": 3, "top_p": 0.9}')
    (bundle / "config/routing.json").write_text("{not json")
    (bundle / "model/weights/extra.bin").write_bytes(b"pickle")
    (bundle / "notes.txt").write_text("stray")
    _, _, problems = validate(bundle)
    text = "\n".join(problems)
    assert "prompt/system.txt: missing (system-prompt is required)" in text
    assert "config/generation.json:temperature: Input should be less than or equal to 2" in text
    assert "config/generation.json:max_tokens: Field required" in text
    assert "config/routing.json: not valid JSON (line 1, column 2" in text
    assert "model/weights/extra.bin: pickle-based weights can run code when loaded" in text
    assert "notes.txt: not part of the bundle layout" in text
    with pytest.raises(BundleError) as caught:
        load_local(bundle)
    assert len(caught.value.problems) == len(problems) >= 6


def test_what_the_gateway_could_not_serve_is_refused_before_publishing(bundle: Path) -> None:
    """A template variable the gateway cannot fill, or no tokenizer.json to count input
    tokens with, would stop every pod at start: validate (and so publish) says so first."""
    (bundle / "prompt/system.txt").write_text("You help {{ customer }} on {{date}} ({{tier}}).")
    (bundle / "model/tokenizer/tokenizer.json").unlink()
    _, _, problems = validate(bundle)
    assert problems == [
        "prompt/system.txt: names {{customer}}, {{tier}}; a template may use only {{model}}, "
        "{{version}}, {{date}}, {{user}}",
        "model/tokenizer/tokenizer.json: missing; the gateway counts input tokens with the "
        "model's own tokenizer (the `tokenizers` library's file, which Hugging Face models ship)",
    ]


def test_metadata_architecture_must_match_the_model_config(bundle: Path) -> None:
    edit_json(bundle / "metadata.json", architecture="MistralForCausalLM")
    _, _, problems = validate(bundle)
    assert problems == [
        "metadata.json:architecture: 'MistralForCausalLM' is not among model/config.json "
        "architectures ['LlamaForCausalLM']"
    ]


def test_few_shot_examples_are_checked_line_by_line(bundle: Path) -> None:
    (bundle / "prompt/few_shot/examples.jsonl").write_text(
        '{"input": "a", "output": "b"}\n{"input": ""}\n'
    )
    _, _, problems = validate(bundle)
    assert (
        "prompt/few_shot/examples.jsonl:2:input: String should have at least 1 character"
        in problems
    )
    assert "prompt/few_shot/examples.jsonl:2:output: Field required" in problems


def test_evaluation_results_follow_their_schema(bundle: Path) -> None:
    (bundle / "tests").mkdir()
    (bundle / "tests/evaluation.json").write_text(
        json.dumps(
            {
                "toxicity": 0.01,
                "win_rate": 0.56,
                "latency_p99_ms": 900,
                "adversarial": {"passed": 11, "total": 10},
            }
        )
    )
    _, _, problems = validate(bundle)
    assert problems == ["tests/evaluation.json:adversarial: passed (11) cannot exceed total (10)"]


def test_symlinks_are_refused(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("secret")
    (bundle / "prompt/few_shot/link.json").symlink_to(tmp_path / "outside")
    _, _, problems = validate(bundle)
    assert any("link.json: only regular files" in p for p in problems)


def test_files_that_would_collide_in_the_serving_layout_are_refused(bundle: Path) -> None:
    (bundle / "model/weights/config.json").write_text("{}")
    _, _, problems = validate(bundle)
    assert any(
        "model/weights/config.json: same file name as model/config.json" in p for p in problems
    )


def test_hashing_matches_hashlib_and_runs_files_in_parallel(tmp_path: Path) -> None:
    import hashlib

    for i in range(4):
        (tmp_path / f"f{i}").write_bytes(bytes([i]) * (3 * 1024 * 1024 + i))
    hashed = hash_files(tmp_path, [f"f{i}" for i in range(4)], workers=2)
    for i in range(4):
        data = (tmp_path / f"f{i}").read_bytes()
        assert hashed[f"f{i}"] == (hashlib.sha256(data).hexdigest(), len(data))
    assert (
        sha256_file(tmp_path / "f0")[0]
        == hashlib.sha256((tmp_path / "f0").read_bytes()).hexdigest()
    )


def test_manifest_digest_is_deterministic_and_names_the_id(bundle: Path) -> None:
    first, second = manifest(bundle), manifest(bundle)
    assert first.digest == second.digest
    assert str(first.id) == f"support-assistant/v1.0.0-{first.digest[:12]}"
    assert BundleId.parse(str(first.id)) == first.id
    assert Manifest.from_core(json.loads(json.dumps(first.core()))).digest == first.digest
    assert manifest(bundle, "1.0.1").digest != first.digest


@pytest.mark.parametrize(
    ("edit", "bump", "reason"),
    [
        (
            lambda b: (b / "prompt/system.txt").write_text("Be terse."),
            Bump.MINOR,
            "system prompt changed",
        ),
        (
            lambda b: (b / "prompt/few_shot/more.json").write_text(
                '[{"input": "x", "output": "y"}]'
            ),
            Bump.MINOR,
            "few-shot examples changed",
        ),
        (
            lambda b: (b / "model/weights/model.safetensors").write_bytes(b"x" * 64),
            Bump.MINOR,
            "weights changed",
        ),
        (
            lambda b: (b / "model/tokenizer/tokenizer.json").write_text("{}"),
            Bump.MAJOR,
            "tokenizer changed",
        ),
        (
            lambda b: edit_json(b / "metadata.json", base_model="mistralai/Mistral-7B"),
            Bump.MAJOR,
            "base model changed",
        ),
        (
            lambda b: edit_json(b / "config/generation.json", temperature=0.2),
            Bump.PATCH,
            "generation parameters changed",
        ),
        (
            lambda b: edit_json(b / "config/safety.json", max_toxicity=0.01),
            Bump.PATCH,
            "safety configuration changed",
        ),
        (
            lambda b: edit_json(b / "config/routing.json", request_timeout_seconds=60),
            Bump.PATCH,
            "routing rules changed",
        ),
        (
            lambda b: edit_json(
                b / "metadata.json",
                dependencies={"serving_image": "vllm/vllm-openai@sha256:" + "1" * 64},
            ),
            Bump.PATCH,
            "dependency versions changed",
        ),
    ],
)
def test_bump_rules(bundle: Path, edit, bump: Bump, reason: str) -> None:  # type: ignore[no-untyped-def]
    before = manifest(bundle)
    edit(bundle)
    change = diff(before, manifest(bundle))
    assert change.bump is bump
    assert any(r.startswith(reason) for r in change.reasons), change.reasons


def test_identical_bundles_need_no_bump(bundle: Path) -> None:
    change = diff(manifest(bundle), manifest(bundle, "1.0.1"))
    assert change.bump is None
    assert change.changes == ()


def test_a_tampered_manifest_schema_is_refused() -> None:
    with pytest.raises(BundleError, match="schema"):
        Manifest.from_core({"schema": "other", "name": "x", "version": "1.0.0", "files": []})
    with pytest.raises(BundleError, match="malformed manifest"):
        Manifest.from_core({"schema": "weightshift.bundle/v1", "name": "x", "files": []})
