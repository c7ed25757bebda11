"""The bundle commands at their edges (issue 17): the init container's pull run again over
its volume (``--reuse``), paths that cannot be used, a version published twice, JSON that
names a key twice, a prompt-only publish's summary, and which error comes first.

The command runs in this process (``weightshift.cli.main``) against moto; every S3 call its
client makes is recorded, so "nothing was downloaded" is counted, not timed."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

import weightshift.bundles.manifest as manifest_module
import weightshift.bundles.store as store_module
from tests.conftest import BUCKET
from tests.test_bundle import checkpoint, make_publishable
from tests.test_store import _tamper, files_of, make_store
from weightshift.bundles import strict_json
from weightshift.bundles.layout import validate
from weightshift.bundles.manifest import load_local
from weightshift.bundles.skeleton import init_bundle
from weightshift.bundles.store import BundleStore, Interrupted, StoreError, manifest_key
from weightshift.bundles.versioning import BundleId, Version
from weightshift.cli import main

NAME = "edge-bot"


@pytest.fixture
def calls(s3: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every S3 call the command's own client makes: (operation, key)."""
    made: list[tuple[str, str]] = []
    original = store_module.default_client

    def recorded(workers: int = 16) -> Any:
        client = original(workers)

        def note(model: Any, params: dict[str, Any], **_: Any) -> None:
            made.append((model.name, str(params.get("Key", ""))))

        client.meta.events.register("before-parameter-build.s3", note)
        return client

    monkeypatch.setattr(store_module, "default_client", recorded)
    monkeypatch.setenv("WEIGHTSHIFT_BUCKET", BUCKET)
    return made


def blob_reads(calls: list[tuple[str, str]]) -> list[str]:
    return [key for operation, key in calls if operation == "GetObject" and key.startswith("blob")]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``weightshift ARGS``: exit status, stdout, stderr (a traceback fails the test)."""
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, " ".join(err.split())


@pytest.fixture
def published(s3: Any, tmp_path: Path) -> tuple[BundleStore, Path, BundleId, BundleId]:
    """Two versions of a bundle: v1.0.0, and v1.1.0 with another system prompt."""
    store = make_store(s3)
    root = tmp_path / "bundle"
    init_bundle(root, NAME)
    make_publishable(
        root,
        {
            "model-00001-of-00002.safetensors": checkpoint(b"\x01" * 4096),
            "model-00002-of-00002.safetensors": checkpoint(b"\x02" * 4096),
        },
    )
    first = store.publish(load_local(root), Version(1, 0, 0)).id
    (root / "prompt/system.txt").write_text("You triage tickets.\n")
    second = store.publish(load_local(root), Version(1, 1, 0)).id
    return store, root, first, second


# --- the init container's pull, run again over the same volume ------------------------------


def init_container(volume: Path, bundle: BundleId) -> list[str]:
    """The init container's argv (components/inference_pods.py), its volume at ``volume``."""
    return ["bundle", "pull", str(bundle), str(volume / "current"), "--serving-layout", "--reuse"]


def without_layout(root: Path) -> dict[str, bytes]:
    """The bundle's files at ``root``, without the serving layout's links to them."""
    return {rel: data for rel, data in files_of(root).items() if not rel.startswith("hf/")}


def inodes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_ino for p in root.rglob("*")}


def test_the_init_container_run_twice_over_the_same_volume_keeps_its_first_pull(
    published: tuple[BundleStore, Path, BundleId, BundleId],
    calls: list[tuple[str, str]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, root, _, bundle = published
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    volume = tmp_path / "volume"
    volume.mkdir()
    count = len(files_of(root))
    status, out, _ = run(capsys, *init_container(volume, bundle))
    assert status == 0
    assert out.startswith(f"{bundle}: {count} files")
    assert blob_reads(calls)
    current = volume / "current"
    before = inodes(current)
    assert "hf/config.json" in before
    calls.clear()

    status, out, _ = run(capsys, *init_container(volume, bundle))  # the sandbox restarted
    assert status == 0
    assert re.fullmatch(
        rf"kept: verified {count} files, [\d.]+ KiB of {bundle} in {current}; nothing downloaded\n",
        out,
    )
    assert blob_reads(calls) == []
    assert inodes(current) == before
    assert without_layout(current) == files_of(root)
    assert sorted(p.name for p in volume.iterdir()) == ["current"]

    status, out, _ = run(capsys, *init_container(volume, bundle), "--json")
    document = json.loads(out)
    assert (document["outcome"], document["bytesDownloaded"], document["replaced"]) == (
        "kept",
        0,
        None,
    )


def pull_reuse(store: BundleStore, bundle: BundleId, dest: Path) -> Any:
    return store.pull(bundle, dest, serving_layout=True, reuse=True)


def count_blob_reads(s3: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    original = s3.get_object

    def counted(**kwargs: Any) -> Any:
        if kwargs["Key"].startswith("blobs/"):
            reads.append(kwargs["Key"])
        return original(**kwargs)

    monkeypatch.setattr(s3, "get_object", counted)
    return reads


def test_a_folder_of_another_bundle_is_replaced(
    published: tuple[BundleStore, Path, BundleId, BundleId], tmp_path: Path
) -> None:
    store, root, first, second = published
    dest = tmp_path / "current"
    pull_reuse(store, first, dest)
    result = pull_reuse(store, second, dest)
    assert (result.outcome, result.replaced) == ("replaced", f"it holds {first}")
    assert files_of(dest)["prompt/system.txt"] == (root / "prompt/system.txt").read_bytes()
    assert json.loads((dest / ".weightshift/bundle.json").read_text())["id"] == str(second)


DAMAGES = {
    "tampered": "prompt/system.txt does not match its sha256 in the manifest",
    "truncated": "prompt/system.txt is not the size the manifest gives",
    "removed": "1 file(s) of the bundle missing, prompt/system.txt first",
    "added": "notes.txt is not a file of the bundle",
    "unrecorded": "no .weightshift/bundle.json, the record a finished pull writes last",
    "hf": "the serving layout hf/ is missing or incomplete",
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_copy_is_replaced_and_a_whole_one_kept(
    published: tuple[BundleStore, Path, BundleId, BundleId],
    s3: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    damage: str,
) -> None:
    store, root, _, bundle = published
    reason = DAMAGES[damage]
    dest = tmp_path / "current"
    pull_reuse(store, bundle, dest)
    prompt = dest / "prompt/system.txt"
    text = prompt.read_text()
    if damage == "tampered":
        prompt.write_text(text.upper())  # same size, other bytes
    elif damage == "truncated":
        prompt.write_text(text[:5])
    elif damage == "removed":
        prompt.unlink()
    elif damage == "added":
        (dest / "notes.txt").write_text("mine")
    elif damage == "unrecorded":
        (dest / ".weightshift/bundle.json").unlink()
    else:
        (dest / "hf/config.json").unlink()
    reads = count_blob_reads(s3, monkeypatch)
    result = pull_reuse(store, bundle, dest)
    assert (result.outcome, result.replaced) == ("replaced", reason)
    assert reads
    assert without_layout(dest) == files_of(root)
    assert (dest / "hf/config.json").is_file()
    reads.clear()
    assert pull_reuse(store, bundle, dest).outcome == "kept"
    assert reads == []


def test_an_empty_volume_is_filled_and_a_mounted_folder_that_cannot_go_is_refilled_in_place(
    published: tuple[BundleStore, Path, BundleId, BundleId],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, root, first, second = published
    dest = tmp_path / "mount"
    dest.mkdir()
    assert pull_reuse(store, first, dest).outcome == "pulled"
    original = Path.rmdir

    def mount_point(self: Path) -> None:
        if self == dest:
            raise OSError(errno.EBUSY, "Device or resource busy", str(self))
        original(self)

    monkeypatch.setattr(Path, "rmdir", mount_point)
    result = pull_reuse(store, second, dest)
    assert result.outcome == "replaced"
    assert files_of(dest)["prompt/system.txt"] == (root / "prompt/system.txt").read_bytes()


def interrupt_pull(store: BundleStore, s3: Any, bundle: BundleId, dest: Path, mp: Any) -> None:
    """Pull ``bundle`` to ``dest`` and press Ctrl-C at its third blob."""
    store.workers = 1
    reads: list[str] = []
    original = s3.get_object

    def ctrl_c(**kwargs: Any) -> Any:
        if kwargs["Key"].startswith("blobs/"):
            reads.append(kwargs["Key"])
            if len(reads) == 3:
                raise KeyboardInterrupt
        return original(**kwargs)

    mp.setattr(s3, "get_object", ctrl_c)
    with pytest.raises(Interrupted):
        store.pull(bundle, dest)
    mp.setattr(s3, "get_object", original)


def test_what_an_interrupted_pull_of_another_bundle_left_is_removed(
    published: tuple[BundleStore, Path, BundleId, BundleId],
    s3: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, _, first, second = published
    dest = tmp_path / "current"
    interrupt_pull(store, s3, first, dest, monkeypatch)
    leftover = tmp_path / f".current.partial-{first.digest}"
    assert leftover.is_dir()
    result = pull_reuse(store, second, dest)
    assert (result.outcome, result.removed_staging) == ("pulled", (str(leftover),))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "bundle") == ["current"]
    # A leftover beside a copy that is kept goes too.
    dest.rename(tmp_path / "aside")
    interrupt_pull(store, s3, first, dest, monkeypatch)
    (tmp_path / "aside").rename(dest)
    assert leftover.is_dir()
    again = pull_reuse(store, second, dest)
    assert (again.outcome, again.removed_staging) == ("kept", (str(leftover),))
    assert not leftover.exists()


def test_an_interrupted_pull_of_the_same_bundle_resumes_with_reuse(
    published: tuple[BundleStore, Path, BundleId, BundleId],
    s3: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, root, _, bundle = published
    dest = tmp_path / "current"
    interrupt_pull(store, s3, bundle, dest, monkeypatch)
    result = pull_reuse(store, bundle, dest)
    assert (result.outcome, result.removed_staging) == ("pulled", ())
    assert result.bytes_resumed > 0
    assert not (tmp_path / f".current.partial-{bundle.digest}").exists()
    assert files_of(dest)["prompt/system.txt"] == (root / "prompt/system.txt").read_bytes()


def test_without_reuse_a_folder_with_files_is_refused_before_the_bucket_is_read(
    published: tuple[BundleStore, Path, BundleId, BundleId],
    calls: list[tuple[str, str]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    status, out, err = run(capsys, "bundle", "pull", f"{NAME}/v1.1.0", str(dest))
    assert (status, out) == (2, "")
    assert f"{dest} already exists and is not an empty folder" in err
    assert "pass --reuse" in err
    assert calls == []
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


def test_the_store_refuses_a_folder_with_files_before_reading_the_bucket(
    published: tuple[BundleStore, Path, BundleId, BundleId],
    s3: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, _, _, bundle = published
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    reads: list[str] = []
    original = s3.get_object

    def read(**kwargs: Any) -> Any:
        reads.append(kwargs["Key"])
        return original(**kwargs)

    monkeypatch.setattr(s3, "get_object", read)
    with pytest.raises(StoreError, match="already exists and is not an empty folder"):
        store.pull(bundle, dest)
    assert reads == []
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


# --- paths that cannot be used: one paragraph, exit 2 ------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["init", "{file}/sub", "--name", NAME], "{file} is a file, not a folder, so no folder"),
        (["init", "/proc/nope", "--name", NAME], "DIR /proc/nope is under /proc, a kernel file"),
        (["init", "{file}", "--name", NAME], "DIR {file} is a file, not a folder"),
        (["pull", f"{NAME}/v1.0.0", "{file}/sub"], "{file} is a file, not a folder, so no folder"),
        (["pull", f"{NAME}/v1.0.0", "/proc/nope"], "DEST /proc/nope is under /proc"),
        (["pull", f"{NAME}/v1.0.0", "/sys/nope", "--reuse"], "DEST /sys/nope is under /sys"),
        (["pull", f"{NAME}/v1.0.0", "{file}"], "DEST {file} is a file, not a folder"),
        (["publish", "{file}/sub", "--bump", "auto"], "{file}/sub is not a folder"),
        (["publish", "{file}", "--bump", "auto"], "{file} is a file, not a folder"),
        (["validate", "{file}"], "{file} is a file, not a folder"),
    ],
)
def test_a_path_that_cannot_be_used_is_one_paragraph_and_exit_2(
    calls: list[tuple[str, str]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: list[str],
    expected: str,
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("a file\n")
    args = [part.replace("{file}", str(readme)) for part in command]
    status, out, err = run(capsys, "bundle", *args)
    assert (status, out) == (2, "")
    assert err.startswith("weightshift bundle: error: ")
    assert expected.replace("{file}", str(readme)) in err
    assert calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


@pytest.mark.parametrize(
    "case",
    [("init", False), ("init", True), ("pull", False), ("pull", True)],
    ids=["init-denied", "init-read-only", "pull-denied", "pull-read-only"],
)
def test_a_folder_that_may_not_be_written_is_refused_before_any_work(
    calls: list[tuple[str, str]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, bool],
) -> None:
    """As the operating system answers a user without write access, or a read-only mount
    (this suite may run as root, which is never denied: ``access`` and ``statvfs`` answer as
    they would)."""
    command, read_only = case
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access, real_statvfs = os.access, os.statvfs
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))

    class Flags:
        f_flag = os.ST_RDONLY if read_only else 0

    monkeypatch.setattr(os, "statvfs", lambda p: Flags() if Path(p) == locked else real_statvfs(p))
    dest = locked / "new"
    args = (
        ["init", str(dest), "--name", NAME]
        if command == "init"
        else ["pull", f"{NAME}/v1.0.0", str(dest)]
    )
    status, out, err = run(capsys, "bundle", *args)
    assert (status, out) == (2, "")
    name = "DIR" if command == "init" else "DEST"
    if read_only:
        assert f"{name} {dest}: {locked} is on a read-only file system" in err
    else:
        assert f"{name} {dest}: permission denied: you may not write in {locked}" in err
    assert calls == []
    assert list(locked.iterdir()) == []


def test_a_disk_that_fills_up_during_init_leaves_nothing_and_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[Path] = []
    original = Path.write_bytes

    def full_after_three(self: Path, data: Any) -> int:
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        written.append(self)
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_after_three)
    dest = tmp_path / "new" / "bundle"
    status, out, err = run(capsys, "bundle", "init", str(dest), "--name", NAME)
    assert (status, out) == (2, "")
    assert "no space left on the device: free some, or use another disk" in err
    assert not (tmp_path / "new").exists()


# --- a version already published, before hashing ------------------------------------------


def test_a_version_already_published_is_refused_before_hashing(
    published: tuple[BundleStore, Path, BundleId, BundleId],
    calls: list[tuple[str, str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, root, _, second = published
    hashed: list[object] = []
    monkeypatch.setattr(manifest_module, "hash_files", lambda *a, **k: hashed.append(a))
    status, out, err = run(capsys, "bundle", "publish", str(root), "--version", "1.1.0")
    assert (status, out) == (2, "")
    assert f"{NAME} v1.1.0 is already published, as {second}; versions are never replaced" in err
    assert "Bump the version" in err
    assert hashed == []
    assert not [c for c in calls if c[0] in ("PutObject", "CreateMultipartUpload")]


# --- a prompt-only publish says what it uploaded and what it reused --------------------------


def test_a_prompt_only_publish_says_what_was_reused_and_uploaded_in_words(
    published: tuple[BundleStore, Path, BundleId, BundleId],
    calls: list[tuple[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, root, _, second = published
    (root / "prompt/system.txt").write_text("You triage tickets, briefly.\n")
    reused = sum(len(d) for rel, d in files_of(root).items() if rel != "prompt/system.txt")
    status, out, err = run(capsys, "bundle", "publish", str(root), "--bump", "auto")
    assert status == 0
    assert out.startswith(f"{NAME}/v1.2.0-")
    assert "uploading:" not in err
    assert (
        f"weights, tokenizer, model-config, few-shot, generation, safety, routing, metadata "
        f"reused from {second}: {len(files_of(root)) - 1} files, {reused / 1024:.1f} KiB; "
        "uploaded 1 file, 29 bytes (system-prompt)"
    ) in err
    (root / "config/generation.json").write_text(
        '{"temperature": 0.2, "top_p": 0.9, "max_tokens": 1024, "stop": []}\n'
    )
    status, out, _ = run(capsys, "bundle", "publish", str(root), "--bump", "auto", "--json")
    document = json.loads(out)
    assert document["filesUploaded"] == ["config/generation.json"]
    assert len(document["filesReused"]) == len(files_of(root)) - 1
    assert document["reusedFrom"].startswith(f"{NAME}/v1.2.0-")


# --- JSON that names a key twice ------------------------------------------------------------

GENERATION = """{
  "top_p": 0.9,
  "temperature": 0.7,
  "max_tokens": 1024,
  "stop": [],
  "seed": 7,
  "temperature": 1.9
}
"""


def test_a_key_given_twice_is_refused_with_both_lines(
    calls: list[tuple[str, str]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = tmp_path / "bundle"
    init_bundle(root, NAME)
    make_publishable(root)
    (root / "config/generation.json").write_text(GENERATION)
    problem = (
        'config/generation.json line 7: key "temperature" appears twice (first at line 3): '
        "remove one"
    )
    assert validate(root)[2] == [problem]
    status, out, _ = run(capsys, "bundle", "validate", str(root))
    assert status == 1
    assert f"invalid: {problem}" in out
    status, out, err = run(capsys, "bundle", "publish", str(root), "--bump", "auto")
    assert (status, out) == (2, "")
    assert problem in err
    assert calls == []


@pytest.mark.parametrize(
    ("path", "text", "problem"),
    [
        ("metadata.json", None, 'metadata.json line 3: key "name" appears twice (first at line 2)'),
        (
            "prompt/few_shot/examples.jsonl",
            '{"input": "a", "output": "b"}\n{"input": "a", "output": "b", "input": "c"}\n',
            "prompt/few_shot/examples.jsonl:2: not valid JSON "
            '(key "input" appears twice (first at column 2): remove one)',
        ),
        (
            "prompt/few_shot/more.json",
            '[\n {"input": "a",\n  "output": "b",\n  "output": "c"}\n]\n',
            'prompt/few_shot/more.json line 4: key "output" appears twice (first at line 3)',
        ),
        (
            "model/tokenizer/tokenizer_config.json",
            '{"model_max_length": 8192,\n "model_max_length": 4}',
            'model/tokenizer/tokenizer_config.json line 2: key "model_max_length" appears twice',
        ),
        (
            "model/config.json",
            '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "model_type": "x"}',
            'model/config.json line 1: key "model_type" appears twice (first at column 41)',
        ),
    ],
)
def test_every_json_file_of_a_bundle_refuses_a_key_given_twice(
    tmp_path: Path, path: str, text: str | None, problem: str
) -> None:
    root = tmp_path / "bundle"
    init_bundle(root, NAME)
    if text is None:
        data = (root / path).read_text().replace('"name"', f'"name": "{NAME}",\n  "name"', 1)
        text = data
    (root / path).write_text(text)
    problems = validate(root)[2]
    assert any(found.startswith(problem) for found in problems), problems


def test_a_published_manifest_naming_a_key_twice_is_refused(
    published: tuple[BundleStore, Path, BundleId, BundleId], s3: Any
) -> None:
    store, _, first, _ = published
    key = manifest_key(NAME, Version(1, 0, 0))
    found = store.resolve(first)
    body = s3.get_object(Bucket=BUCKET, Key=key, VersionId=found.version_id)["Body"].read()
    tampered = b'{"publishedAt": "1999-01-01T00:00:00+00:00",' + body[1:]
    _tamper(s3, key, found.version_id, tampered)
    stored = s3_key(key, found.version_id)
    stored.checksum_value = base64.b64encode(hashlib.sha256(tampered).digest()).decode()
    with pytest.raises(
        StoreError, match=r'is not a weightshift manifest \(line 1: key "publishedAt" appears twice'
    ):
        store.resolve(first)


def s3_key(key: str, version_id: str) -> Any:
    """moto's record of one object version (to keep its stored checksum true to a tamper)."""
    from moto.s3.models import s3_backends

    bucket = s3_backends["123456789012"]["aws"].buckets[BUCKET]
    (found,) = [k for k in bucket.keys.getlist(key) if k.version_id == version_id]
    return found


def test_the_duplicate_scan_finds_keys_in_nested_objects_and_ignores_strings() -> None:
    assert strict_json.loads('{"a": {"a": 1}, "b": ["a", {"a": 2}], "c": "\\"a\\": 3"}') == {
        "a": {"a": 1},
        "b": ["a", {"a": 2}],
        "c": '"a": 3',
    }
    with pytest.raises(strict_json.DuplicateKeyError) as twice:
        strict_json.loads('{"x": [{"k": 1,\n"j": 2,\n"k": 3}], "k": 4}')
    assert (twice.value.key, twice.value.lineno, str(twice.value)) == (
        "k",
        3,
        'line 3: key "k" appears twice (first at line 1): remove one',
    )
    with pytest.raises(json.JSONDecodeError):
        strict_json.loads(b'{"a": 1, "a": 1}')


# --- the cheap checks first ----------------------------------------------------------------


def test_diff_says_a_malformed_id_before_hashing_a_folder_or_asking_for_a_bucket(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "bundle"
    init_bundle(root, NAME)
    hashed: list[object] = []
    monkeypatch.setattr(manifest_module, "hash_files", lambda *a, **k: hashed.append(a))
    monkeypatch.delenv("WEIGHTSHIFT_BUCKET", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never a real bucket
    for args in ([str(root), "notanid"], [f"{NAME}/v1.0.0", "notanid"]):
        status, out, err = run(capsys, "bundle", "diff", *args)
        assert (status, out) == (2, "")
        assert "notanid is not a folder, and not a published bundle either" in err
        assert "No bucket" not in err
    assert hashed == []
