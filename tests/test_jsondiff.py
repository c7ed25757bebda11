"""One JSON leaf diff for `weightshift plan` and `weightshift bundle diff`: each command's output
pinned as it was before the two diffs became one (``weightshift/jsondiff.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.test_bundle import checkpoint, make_publishable
from weightshift.bundles.diff import ValueChange, value_changes
from weightshift.bundles.skeleton import init_bundle
from weightshift.cli import main
from weightshift.jsondiff import ABSENT
from weightshift.preview import plan


def bundle_rendered(before: Any, after: Any) -> list[str]:
    return [change.render() for change in value_changes(before, after)]


def plan_rendered(before: Any, after: Any) -> list[tuple[str, Any, Any]]:
    return [(v.path, v.before, v.after) for v in plan._leaves(before, after)]


# --- `weightshift plan`: lists of one length are indexed, whatever their items -----------------


def test_plan_indexes_lists_of_one_length_and_reports_absent_as_none() -> None:
    before = {
        "spec": {"replicas": 2, "ports": [80, 443], "gone": {"x": 1}},
        "rules": [{"w": 90}, {"w": 10}],
        "tags": ["a"],
        "same": None,
        "n": 1,
        "flag": True,
    }
    after = {
        "spec": {"replicas": 3, "ports": [80, 8443], "new": [1]},
        "rules": [{"w": 80}, {"w": 20}],
        "tags": ["a", "b"],
        "n": 1.0,
        "flag": 1,
    }
    assert plan_rendered(before, after) == [
        ("rules[0].w", 90, 80),
        ("rules[1].w", 10, 20),
        ("spec.gone", {"x": 1}, None),
        ("spec.new", None, [1]),
        ("spec.ports[1]", 443, 8443),
        ("spec.replicas", 2, 3),
        ("tags", ["a"], ["a", "b"]),
    ]


def test_plan_treats_a_change_of_shape_as_one_value() -> None:
    assert plan_rendered({"a": {"b": 1}}, {"a": [1]}) == [("a", {"b": 1}, [1])]
    assert plan_rendered({"a": [{"b": 1}]}, {"a": [{"b": 1}, {"b": 2}]}) == [
        ("a", [{"b": 1}], [{"b": 1}, {"b": 2}])
    ]
    assert plan_rendered({"a": {}}, {"a": {"b": 1}}) == [("a.b", None, 1)]
    assert plan_rendered({"a": None}, {}) == []
    assert plan_rendered({"x": [3, 1, 2] * 4}, {"x": [3, 1, 2] * 3 + [9, 9, 9]})[0][0] == "x[9]"
    assert [p for p, _, _ in plan_rendered({"l": list(range(12))}, {"l": [0] * 12})] == [
        f"l[{i}]" for i in range(1, 12)
    ]


def test_plan_json_lists_every_changed_value_with_its_path() -> None:
    change = plan.Change("urn", "kubernetes:apps/v1:Deployment", "d", "update", ("spec",), ())
    assert change.to_json()["values"] == []
    values = plan._leaves({"spec": {"replicas": 1}}, {"spec": {"replicas": 2}, "x": "y"})
    assert [{"path": v.path, "before": v.before, "after": v.after} for v in values] == [
        {"path": "spec.replicas", "before": 1, "after": 2},
        {"path": "x", "before": None, "after": "y"},
    ]
    assert [str(v) for v in values] == ["spec.replicas 1 → 2", "x (none) → y"]


# --- `weightshift bundle diff`: lists of objects are indexed, other lists are one value --------


def test_bundle_indexes_lists_of_objects_and_keeps_other_lists_whole() -> None:
    before = {
        "stop": ["a"],
        "rules": [{"p": "interactive", "m": {"h": "x"}}],
        "n": 1,
        "flag": True,
        "gone": {"deep": {"er": 1}},
    }
    after = {
        "stop": ["a", "b"],
        "rules": [{"p": "batch", "m": {"h": "x"}}, {"p": "interactive", "m": {}}],
        "n": 1.0,
        "flag": 1,
    }
    assert bundle_rendered(before, after) == [
        "flag: true \u2192 1",
        "- gone.deep.er: 1",
        "n: 1 \u2192 1.0",
        'rules[0].p: "interactive" \u2192 "batch"',
        "+ rules[1].m: {}",
        '+ rules[1].p: "interactive"',
        'stop: ["a"] \u2192 ["a", "b"]',
    ]


def test_bundle_lists_an_empty_container_only_where_nothing_fills_it() -> None:
    assert bundle_rendered({"a": {"x": 1}}, {"a": {}}) == ["- a.x: 1"]
    assert bundle_rendered({"a": []}, {"a": [{"x": 1}]}) == ["+ a[0].x: 1"]
    assert bundle_rendered({"a": {}}, {"a": {"b": {}}}) == ["+ a.b: {}"]
    assert bundle_rendered({"a": []}, {"a": 1}) == ["a: [] \u2192 1"]
    assert bundle_rendered({"a": {"x": 1}}, {"a": 5}) == ["+ a: 5", "- a.x: 1"]
    assert bundle_rendered({"a": {"x": 1}}, {"a": [{"x": 2}]}) == ["- a.x: 1", "+ a[0].x: 2"]
    assert bundle_rendered({"a": {"x": 1}}, {"a": [1, 2]}) == ["+ a: [1, 2]", "- a.x: 1"]
    # The whole document is a value of its own: an added file starts from an empty one.
    assert bundle_rendered({}, {"a": 1, "b": [1, 2]}) == [
        "- (whole file): {}",
        "+ a: 1",
        "+ b: [1, 2]",
    ]
    assert bundle_rendered({"a": {}}, {}) == ["+ (whole file): {}", "- a: {}"]
    assert bundle_rendered([1], {"a": 1}) == ["- (whole file): [1]", "+ a: 1"]
    assert bundle_rendered([1], [2]) == ["(whole file): [1] \u2192 [2]"]
    assert bundle_rendered({}, {}) == []
    assert bundle_rendered({"x": "é"}, {"x": "e"}) == ['x: "é" \u2192 "e"']


def test_bundle_orders_keys_as_text_and_keeps_absent_apart_from_null() -> None:
    rules = [{"p": i} for i in range(11)]
    changed = [{"p": i + 1} for i in range(11)]
    keys = [c.key for c in value_changes({"rules": rules}, {"rules": changed})]
    assert keys == sorted(f"rules[{i}].p" for i in range(11))
    assert keys[:3] == ["rules[0].p", "rules[10].p", "rules[1].p"]
    assert value_changes({"a": None, "b": 1}, {"b": 1}) == (ValueChange("a", None, ABSENT),)
    assert ValueChange("a", None, ABSENT).to_json() == {"key": "a", "before": None}
    assert value_changes({"a-b": 1, "a": {"x": 1}}, {"a-b": 2, "a": {"x": 2}}) == (
        ValueChange("a-b", 1, 2),
        ValueChange("a.x", 1, 2),
    )


# --- `weightshift bundle diff` end to end, text and --json ------------------------------------


def edit(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2) + "\n")


@pytest.fixture
def two_bundles(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old", tmp_path / "new"
    for root in (old, new):
        init_bundle(root, "diff-demo")
        make_publishable(root)
    edit(new / "config/generation.json", temperature=0.2, stop=["</s>", "###"], seed=3)
    edit(
        new / "config/routing.json",
        rules=[{"match": {"header:x-tenant": "acme"}, "priority": "batch"}],
    )
    edit(old / "config/routing.json", rules=[{"match": {"header:x-tenant": "beta"}}])
    (new / "model/weights/model.safetensors").write_bytes(checkpoint(b"\x02" * 96))
    (new / "prompt/few_shot/more.json").write_text('[{"input": "a", "output": "b"}]\n')
    (new / "tests").mkdir()
    (new / "tests/evaluation.json").write_text(
        json.dumps(
            {
                "toxicity": 0.01,
                "win_rate": 0.6,
                "latency_p99_ms": 900,
                "adversarial": {"passed": 9, "total": 10},
            }
        )
    )
    return old, new


DIFF_TEXT = """\
~ generation: config/generation.json (77 → 115 bytes)
    + seed: 3
    stop: [] → ["</s>", "###"]
    temperature: 0.7 → 0.2
~ routing: config/routing.json (187 → 214 bytes)
    rules[0].match.header:x-tenant: "beta" → "acme"
    + rules[0].priority: "batch"
~ weights: model/weights/model.safetensors (144 → 176 bytes)
+ few-shot: prompt/few_shot/more.json (32 bytes)
+ tests: tests/evaluation.json (101 bytes)
    - (whole file): {}
    + adversarial.passed: 9
    + adversarial.total: 10
    + latency_p99_ms: 900
    + toxicity: 0.01
    + win_rate: 0.6
required bump: MINOR
  generation parameters changed -> PATCH
  routing rules changed -> PATCH
  weights changed (a fine-tune) -> MINOR
  few-shot examples changed -> MINOR
  evaluation results changed -> PATCH
"""


def test_bundle_diff_text_is_pinned(
    two_bundles: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = two_bundles
    assert main(["bundle", "diff", str(old), str(new)]) == 0
    assert capsys.readouterr().out == DIFF_TEXT


DIFF_JSON = """\
{
  "from": "TMP/old",
  "to": "TMP/new",
  "requiredBump": "MINOR",
  "reasons": [
    "generation parameters changed -> PATCH",
    "routing rules changed -> PATCH",
    "weights changed (a fine-tune) -> MINOR",
    "few-shot examples changed -> MINOR",
    "evaluation results changed -> PATCH"
  ],
  "parts": [
    {
      "part": "generation",
      "added": [],
      "removed": [],
      "changed": [
        "config/generation.json"
      ],
      "files": [
        {
          "path": "config/generation.json",
          "change": "changed",
          "sizeBefore": 77,
          "sizeAfter": 115,
          "values": [
            {
              "key": "seed",
              "after": 3
            },
            {
              "key": "stop",
              "before": [],
              "after": [
                "</s>",
                "###"
              ]
            },
            {
              "key": "temperature",
              "before": 0.7,
              "after": 0.2
            }
          ]
        }
      ]
    },
    {
      "part": "routing",
      "added": [],
      "removed": [],
      "changed": [
        "config/routing.json"
      ],
      "files": [
        {
          "path": "config/routing.json",
          "change": "changed",
          "sizeBefore": 187,
          "sizeAfter": 214,
          "values": [
            {
              "key": "rules[0].match.header:x-tenant",
              "before": "beta",
              "after": "acme"
            },
            {
              "key": "rules[0].priority",
              "after": "batch"
            }
          ]
        }
      ]
    },
    {
      "part": "weights",
      "added": [],
      "removed": [],
      "changed": [
        "model/weights/model.safetensors"
      ],
      "files": [
        {
          "path": "model/weights/model.safetensors",
          "change": "changed",
          "sizeBefore": 144,
          "sizeAfter": 176,
          "values": []
        }
      ]
    },
    {
      "part": "few-shot",
      "added": [
        "prompt/few_shot/more.json"
      ],
      "removed": [],
      "changed": [],
      "files": [
        {
          "path": "prompt/few_shot/more.json",
          "change": "added",
          "sizeBefore": null,
          "sizeAfter": 32,
          "values": []
        }
      ]
    },
    {
      "part": "tests",
      "added": [
        "tests/evaluation.json"
      ],
      "removed": [],
      "changed": [],
      "files": [
        {
          "path": "tests/evaluation.json",
          "change": "added",
          "sizeBefore": null,
          "sizeAfter": 101,
          "values": [
            {
              "key": "(whole file)",
              "before": {}
            },
            {
              "key": "adversarial.passed",
              "after": 9
            },
            {
              "key": "adversarial.total",
              "after": 10
            },
            {
              "key": "latency_p99_ms",
              "after": 900
            },
            {
              "key": "toxicity",
              "after": 0.01
            },
            {
              "key": "win_rate",
              "after": 0.6
            }
          ]
        }
      ]
    }
  ]
}
"""


def test_bundle_diff_json_is_pinned(
    two_bundles: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = two_bundles
    assert main(["bundle", "diff", "--json", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert out.replace(str(old.parent), "TMP") == DIFF_JSON
