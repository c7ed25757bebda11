"""The layers of docs/architecture.md hold: import-linter's contracts (pyproject.toml) pass on
the tree and fail on a copy of it with one upward import or one cycle planted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONTRACTS = {
    contract["id"]: contract["name"]
    for contract in tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "importlinter"
    ]["contracts"]
}


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("weightshift", "components", "policies"):
        shutil.copytree(PROJECT / package, tree / package, ignore=ignore)
    shutil.copy(PROJECT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    # The copy comes first on the path: the editable install's finder only answers for
    # what the path does not hold.
    env = {**os.environ, "PYTHONPATH": str(tree), "NO_COLOR": "1", "COLUMNS": "400"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def _plant(tree: Path, module: str, line: str) -> None:
    path = tree / (module.replace(".", "/") + ".py")
    text = path.read_text(encoding="utf-8")
    # after the module docstring and `from __future__`, where an import really goes
    anchor = "from __future__ import annotations\n"
    assert anchor in text, module
    path.write_text(text.replace(anchor, anchor + line + "\n", 1), encoding="utf-8")


@pytest.fixture(scope="module")
def untouched(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    return _lint(_copy(tmp_path_factory.mktemp("clean")))


def test_the_tree_keeps_every_contract(untouched: subprocess.CompletedProcess[str]) -> None:
    assert untouched.returncode == 0, untouched.stdout + untouched.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in untouched.stdout
    assert len(CONTRACTS) == 5


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # the domain reaching up into a component
        (
            "weightshift.bundles.versioning",
            "import components.traffic  # noqa",
            "layers",
        ),
        # the gateway reaching for Pulumi
        (
            "weightshift.gateway.protocol",
            "import pulumi  # noqa",
            "no-pulumi-below-components",
        ),
        # a gateway step reaching up to the server that runs it
        (
            "weightshift.gateway.pipeline",
            "import weightshift.gateway.server  # noqa",
            "gateway-layers",
        ),
        # the rollback function reaching for the package's config
        (
            "weightshift.lambdas.rollback",
            "import weightshift.config  # noqa",
            "rollback-function-small",
        ),
        # a cycle between two siblings of one layer (the layers allow each to import the other)
        (
            "weightshift.rollout.rates",
            "import weightshift.rollout.dead_man  # noqa",
            "acyclic",
        ),
    ],
)
def test_a_planted_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    tree = _copy(tmp_path)
    _plant(tree, module, line)
    if contract == "acyclic":  # close the cycle: dead_man imports rates back
        _plant(tree, "weightshift.rollout.dead_man", "import weightshift.rollout.rates  # noqa")
    result = _lint(tree)
    assert result.returncode == 1, result.stdout
    assert f"{CONTRACTS[contract]} BROKEN" in result.stdout
    # the report names the import: by full name, or within its package for a cycle
    package, _, leaf = module.rpartition(".")
    assert module in result.stdout or (package in result.stdout and f".{leaf}" in result.stdout)
