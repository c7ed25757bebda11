"""A skeleton for a new bundle (``weightshift bundle init``): every part valid, with
placeholders (a marked checkpoint, an all-zero image digest) that publishing refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from weightshift.bundles.content import PLACEHOLDER_MARK, safetensors_bytes
from weightshift.bundles.folders import check_folder_to_write
from weightshift.bundles.hashing import canonical
from weightshift.bundles.schemas import BundleError
from weightshift.bundles.versioning import is_model_name

PLACEHOLDER_IMAGE = "vllm/vllm-openai@sha256:" + "0" * 64


def _placeholder_safetensors() -> bytes:
    """A valid one-tensor safetensors file, so the skeleton validates before real weights exist
    (``unpublishable`` knows it by its mark)."""
    return safetensors_bytes(
        {"placeholder": ("F32", [1], bytes(4))},
        {"weightshift": f"{PLACEHOLDER_MARK}: replace with the real checkpoint"},
    )


def _js(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def _model_files() -> dict[str, bytes]:
    """The placeholder checkpoint, tokenizer and model config."""
    return {
        "model/weights/model.safetensors": _placeholder_safetensors(),
        "model/tokenizer/tokenizer_config.json": _js(
            {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 8192}
        ),
        # A placeholder the `tokenizers` library loads (one token per word), so the gateway
        # can count input tokens before the model's own tokenizer.json replaces it.
        "model/tokenizer/tokenizer.json": _js(
            {
                "version": "1.0",
                "truncation": None,
                "padding": None,
                "added_tokens": [],
                "normalizer": None,
                "pre_tokenizer": {"type": "Whitespace"},
                "post_processor": None,
                "decoder": None,
                "model": {"type": "WordLevel", "vocab": {"[UNK]": 0}, "unk_token": "[UNK]"},
            }
        ),
        "model/config.json": _js({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}),
    }


def _prompt_and_config_files() -> dict[str, bytes]:
    """A system prompt, one few-shot example, and generation, safety and routing settings."""
    return {
        "prompt/system.txt": b"You are a helpful assistant. Answer accurately and concisely.\n",
        "prompt/few_shot/examples.jsonl": canonical(
            {
                "input": "How do I reset my password?",
                "output": "Open Settings, then Security, then Reset password.",
            }
        )
        + b"\n",
        "config/generation.json": _js(
            {"temperature": 0.7, "top_p": 0.9, "max_tokens": 1024, "stop": []}
        ),
        "config/safety.json": _js(
            {
                "input_moderation": True,
                "output_moderation": True,
                "blocked_categories": ["violence", "self-harm", "sexual-minors"],
                "max_toxicity": 0.05,
                "pii_redaction": True,
                "refusal_message": "Sorry, I can't help with that.",
            }
        ),
        "config/routing.json": _js(
            {
                "max_input_tokens": 8192,
                "max_concurrent_requests": 64,
                "request_timeout_seconds": 120,
                "rules": [],
            }
        ),
    }


def skeleton(name: str) -> dict[str, bytes]:
    """The files of a new bundle called ``name``: valid, with placeholders to replace."""
    if not is_model_name(name):
        raise BundleError(
            [
                f"--name {name!r}: lowercase letters, digits and inner hyphens, "
                "at most 40 characters"
            ],
            "bundle name",
        )
    return {
        **_model_files(),
        **_prompt_and_config_files(),
        "metadata.json": _js(
            {
                "name": name,
                "base_model": "meta-llama/Llama-3.1-8B-Instruct",
                "architecture": "LlamaForCausalLM",
                "parent_version": None,
                "source_commit": None,
                "description": "",
                "dependencies": {"serving_image": PLACEHOLDER_IMAGE, "libraries": {}},
            }
        ),
    }


def init_bundle(dest: Path, name: str) -> list[str]:
    """Write a skeleton bundle to ``dest`` (new or empty; :func:`check_folder_to_write`);
    return what to replace before use. A failure part way removes what was written."""
    files = skeleton(name)
    check_folder_to_write(dest, "DIR")
    created = [folder for folder in (dest, *dest.parents) if not folder.exists()]
    if not created and any(dest.iterdir()):
        raise BundleError(
            [f"{dest}: exists and is not an empty folder; choose a new one"], "destination"
        )
    try:
        for rel, data in files.items():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    except BaseException:
        # Nothing half-written: what this call wrote goes, and the folders it made.
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)
        else:
            for child in dest.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    return [
        "model/weights/: the placeholder checkpoint (real .safetensors shards)",
        "model/tokenizer/ and model/config.json: the model's own",
        "metadata.json: base_model, architecture, source_commit, and dependencies.serving_image "
        "(the placeholder digest is all zeros)",
        "prompt/, config/: your prompt, examples, generation, safety and routing settings",
        "tests/evaluation.json: evaluation results, before the first rollout stage",
    ]
