"""Bundle layout, schemas, weights by content, manifests, diffs and bump rules (no cloud)."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from weightshift import console
from weightshift.bundles.content import safetensors_bytes, unpublishable
from weightshift.bundles.diff import ValueChange, diff
from weightshift.bundles.hashing import hash_files, sha256_file
from weightshift.bundles.layout import validate
from weightshift.bundles.manifest import Manifest, load_local
from weightshift.bundles.schemas import BundleError
from weightshift.bundles.skeleton import init_bundle
from weightshift.bundles.versioning import Bump, BundleId, Version
from weightshift.jsondiff import ABSENT

SERVING_IMAGE = "vllm/vllm-openai@sha256:" + "3c0ae4bd21a5fba2a4ab4bcbc7b5e9f0" * 2
WEIGHTS = "model/weights/model.safetensors"


def checkpoint(data: bytes, name: str = "lm_head.weight") -> bytes:
    """A valid safetensors file holding ``data`` as one U8 tensor."""
    return safetensors_bytes({name: ("U8", [len(data)], data)})


def make_publishable(root: Path, weights: Mapping[str, bytes] | None = None) -> None:
    """Replace what `bundle init` left as placeholders: the checkpoint and the image digest."""
    (root / WEIGHTS).unlink()
    for name, data in (weights or {"model.safetensors": checkpoint(b"\x01" * 64)}).items():
        (root / "model/weights" / name).write_bytes(data)
    edit_json(root / "metadata.json", dependencies={"serving_image": SERVING_IMAGE})


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
            lambda b: (b / WEIGHTS).write_bytes(checkpoint(b"x" * 64)),
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


# --- init's placeholders: valid, but not publishable ----------------------------------------


def test_the_skeleton_is_valid_but_its_placeholders_are_not_publishable(bundle: Path) -> None:
    files, metadata, problems = validate(bundle)
    assert problems == []
    assert unpublishable(bundle, files, metadata) == [
        f"{WEIGHTS}: the placeholder checkpoint `bundle init` wrote; put the model's real "
        ".safetensors shards in model/weights/",
        "metadata.json:dependencies.serving_image: the all-zero placeholder digest `bundle init` "
        "wrote; pin the inference server's image by its real digest",
    ]
    assert len(load_local(bundle).unpublishable) == 2
    make_publishable(bundle)
    files, metadata, problems = validate(bundle)
    assert (problems, unpublishable(bundle, files, metadata)) == ([], [])


# --- weights by content ---------------------------------------------------------------------


def header_of(data: bytes) -> dict[str, object]:
    length = int.from_bytes(data[:8], "little")
    found: dict[str, object] = json.loads(data[8 : 8 + length])
    return found


def with_header(header: Mapping[str, object], data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + data


def weight_problems(bundle: Path, data: bytes, name: str = "model.safetensors") -> list[str]:
    make_publishable(bundle, {name: data})
    _, _, problems = validate(bundle)
    return problems


def test_a_safetensors_shard_whose_tensors_fit_it_is_valid(bundle: Path) -> None:
    shard = safetensors_bytes(
        {
            "embed.weight": ("BF16", [4, 8], bytes(64)),
            "norm.weight": ("F32", [8], bytes(32)),
            "scales": ("F4", [6], bytes(3)),
        },
        {"format": "pt"},
    )
    assert weight_problems(bundle, shard) == []


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            lambda shard: shard[:-10],
            "model/weights/model.safetensors: tensor 'w': data_offsets [0, 64] fall outside the "
            "file's 54 bytes of tensor data (is the file truncated?)",
        ),
        (
            lambda shard: shard + bytes(16),
            "model/weights/model.safetensors: the tensors cover 64 bytes, but the file holds 80 "
            "bytes of tensor data after its header",
        ),
        (
            lambda shard: with_header(
                {"w": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 64]}}, bytes(64)
            ),
            "model/weights/model.safetensors: tensor 'w': F32 [4, 8] takes 128 bytes, but its "
            "data_offsets span 64",
        ),
        (
            lambda shard: with_header(
                {
                    "a": {"dtype": "U8", "shape": [32], "data_offsets": [0, 32]},
                    "b": {"dtype": "U8", "shape": [32], "data_offsets": [16, 48]},
                },
                bytes(48),
            ),
            "model/weights/model.safetensors: tensor 'b' starts at byte 16: an overlap after "
            "byte 32",
        ),
        (
            lambda shard: with_header(
                {"w": {"dtype": "Q4_K", "shape": [64], "data_offsets": [0, 64]}}, bytes(64)
            ),
            "model/weights/model.safetensors: tensor 'w': unknown dtype 'Q4_K'",
        ),
        (
            lambda shard: (10**9).to_bytes(8, "little") + shard[8:],
            "model/weights/model.safetensors: not a safetensors file: its first 8 bytes give a "
            "header of 1,000,000,000 bytes",
        ),
        (
            lambda shard: shard[:8] + b"[" + shard[9:],
            "model/weights/model.safetensors: not a safetensors file: its header is not JSON",
        ),
    ],
    ids=["truncated", "trailing-bytes", "dtype-shape", "overlap", "dtype", "length", "not-json"],
)
def test_a_safetensors_shard_is_checked_against_its_header(
    bundle: Path, damage: Callable[[bytes], bytes], expected: str
) -> None:
    shard = checkpoint(bytes(64), "w")
    problems = weight_problems(bundle, damage(shard))
    assert len(problems) == 1
    assert problems[0].startswith(expected), problems


def test_a_header_whose_length_begins_like_a_pickle_is_not_taken_for_one(bundle: Path) -> None:
    """0x80 0x02 opens a protocol-2 pickle, and a 640-byte safetensors header's length."""

    def header(note: int) -> dict[str, object]:
        return {
            "__metadata__": {"note": "x" * note},
            "w": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
        }

    bare = len(json.dumps(header(0)))
    shard = with_header(header(640 - bare), bytes(8))
    assert shard[:2] == b"\x80\x02"
    assert weight_problems(bundle, shard) == []


def torch_zip() -> bytes:
    """What ``torch.save`` writes: a zip archive with the pickle in ``archive/data.pkl``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        archive.writestr("archive/data/0", bytes(16))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("path", "data", "kind"),
    [
        (WEIGHTS, pickle.dumps({"w": [1.0]}, protocol=4), "a pickle (protocol 4)"),
        (
            "model/weights/consolidated.gguf",
            torch_zip(),
            "a PyTorch checkpoint (a zip archive holding the pickle archive/data.pkl)",
        ),
        ("tests/results.bin", pickle.dumps([1, 2], protocol=2), "a pickle (protocol 2)"),
    ],
    ids=["named-safetensors", "zip-named-gguf", "outside-the-weights"],
)
def test_a_pickle_is_refused_by_content_whatever_its_name_and_place(
    bundle: Path, path: str, data: bytes, kind: str
) -> None:
    make_publishable(bundle)
    target = bundle / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    _, _, problems = validate(bundle)
    assert (
        f"{path}: {kind}, whatever its name says: loading it can run code; convert the weights "
        "to .safetensors"
    ) in problems


def test_a_gguf_file_must_start_with_its_magic(bundle: Path) -> None:
    assert weight_problems(bundle, b"GGUF" + bytes(60), "model.gguf") == []
    (bundle / "model/weights/model.gguf").write_bytes(bytes(64))
    _, _, problems = validate(bundle)
    assert problems == ["model/weights/model.gguf: not a GGUF file: it does not start with GGUF"]


# --- hashing shows progress -----------------------------------------------------------------


def test_hashing_a_bundle_prints_progress_lines_without_a_terminal(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "PLAIN_EVERY", 0.0)
    make_publishable(bundle, {"model.safetensors": checkpoint(bytes(3 * 1024 * 1024))})
    stream = io.StringIO()
    load_local(bundle, progress=lambda label, total: console.Progress(label, total, stream))
    lines = stream.getvalue().splitlines()
    assert lines
    assert all(line.startswith("hashing: ") for line in lines)
    assert lines[-1].startswith("hashing: 3.0 MiB of 3.0 MiB (100 %)")


def test_a_progress_line_for_a_few_bytes_says_bytes_not_zero_mebibytes() -> None:
    stream = io.StringIO()
    meter = console.Progress("hashing", 93, stream)
    meter.add(93)
    meter.close()
    assert stream.getvalue().startswith("hashing: 93 bytes of 93 bytes (100 %)")


# --- diffs show values ------------------------------------------------------------------------


def test_a_diff_shows_the_values_that_changed_in_json_parts_and_sizes_elsewhere(
    bundle: Path,
) -> None:
    make_publishable(bundle)
    before = manifest(bundle)
    old = shutil.copytree(bundle, bundle.parent / "old")
    edit_json(bundle / "config/generation.json", temperature=0.3, seed=7, stop=["\n\n"])
    routing = json.loads((bundle / "config/routing.json").read_text())
    routing["rules"] = [{"match": {"header:x-tenant": "acme"}, "priority": "batch"}]
    (bundle / "config/routing.json").write_text(json.dumps(routing))
    (bundle / WEIGHTS).write_bytes(checkpoint(b"\x02" * 96))
    (bundle / "prompt/system.txt").write_text("Be terse.\n")

    def read(root: Path) -> Callable[[str], bytes]:
        return lambda rel: (root / rel).read_bytes()

    change = diff(before, manifest(bundle), read(old), read(bundle))
    by_path = {f.path: f for part in change.changes for f in part.files}
    assert by_path["config/generation.json"].values == (
        ValueChange("seed", ABSENT, 7),
        ValueChange("stop", [], ["\n\n"]),
        ValueChange("temperature", 0.7, 0.3),
    )
    assert by_path["config/routing.json"].values == (
        ValueChange("rules[0].match.header:x-tenant", ABSENT, "acme"),
        ValueChange("rules[0].priority", ABSENT, "batch"),
    )
    weights = by_path[WEIGHTS]
    assert (weights.size_before, weights.size_after, weights.values) == (
        len(checkpoint(b"\x01" * 64)),
        len(checkpoint(b"\x02" * 96)),
        (),
    )
    text = change.render()
    assert "~ generation: config/generation.json (" in text
    assert "    temperature: 0.7 \u2192 0.3" in text
    assert "    + seed: 7" in text
    assert f"~ weights: {WEIGHTS} (" in text
    assert "required bump: MINOR" in text
    document = change.to_json()
    (generation,) = [p for p in document["parts"] if p["part"] == "generation"]
    assert generation["changed"] == ["config/generation.json"]
    assert {"key": "temperature", "before": 0.7, "after": 0.3} in generation["files"][0]["values"]
    assert {"key": "seed", "after": 7} in generation["files"][0]["values"]


def test_nested_keys_are_dotted_and_lists_of_objects_indexed() -> None:
    from weightshift.bundles.diff import value_changes

    before = {"a": {"b": 1, "c": {"d": "x"}}, "rules": [{"p": "interactive"}], "gone": True}
    after = {"a": {"b": 2, "c": {"d": "x", "e": None}}, "rules": [{"p": "batch"}]}
    assert value_changes(before, after) == (
        ValueChange("a.b", 1, 2),
        ValueChange("a.c.e", ABSENT, None),
        ValueChange("gone", True, ABSENT),
        ValueChange("rules[0].p", "interactive", "batch"),
    )
    assert [c.render() for c in value_changes(before, after)] == [
        "a.b: 1 \u2192 2",
        "+ a.c.e: null",
        "- gone: true",
        'rules[0].p: "interactive" \u2192 "batch"',
    ]
