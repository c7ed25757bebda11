"""A small evaluator of CloudWatch metric math, for the subset weightshift's alarms use.

CloudWatch cannot run offline, so the tests evaluate an alarm's expression on given metric
values and compare the verdict with the pure decision function it is meant to encode. One
datapoint at a time: each metric id is a number, or ``None`` for no data in the period.

Semantics follow the CloudWatch metric math reference (Amazon CloudWatch User Guide,
"Using metric math"): ``FILL(m, v)`` replaces missing data with ``v``; arithmetic and
comparisons with missing data give missing data; ``IF(condition, a, b)`` is ``a`` where the
condition is non-zero, else ``b``; comparisons give 1 or 0; ``AND``/``OR`` are logical.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping
from typing import Any


class _Missing:
    """No datapoint: absorbs every operation."""

    def _absorb(self, *_: Any) -> _Missing:
        return self

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _absorb
    __truediv__ = __rtruediv__ = __gt__ = __ge__ = __lt__ = __le__ = _absorb

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()
_TOKENS = (
    (r"\bAND\b", " and "),
    (r"\bOR\b", " or "),
    (r"\bIF\(", "_if("),
    (r"\bFILL\(", "_fill("),
)


def _if(condition: Any, then: Callable[[], Any], otherwise: Callable[[], Any]) -> Any:
    """Per datapoint, only the chosen branch matters (``IF(r > 0, e / r, 0)`` at r = 0 is 0):
    the branches are evaluated lazily, so the other one's division by zero never raises."""
    if condition is MISSING:
        return MISSING
    return then() if condition else otherwise()


def _fill(value: Any, default: float) -> Any:
    return default if value is MISSING else value


def _compare(tree: ast.Expression) -> ast.Expression:
    """Python's ``and``/``or`` short-circuit on truthiness; metric math gives 1 or 0."""

    class Logical(ast.NodeTransformer):
        def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
            self.generic_visit(node)
            name = "_and" if isinstance(node.op, ast.And) else "_or"
            return ast.Call(ast.Name(name, ast.Load()), node.values, [])

        def visit_Call(self, node: ast.Call) -> ast.AST:
            self.generic_visit(node)
            if isinstance(node.func, ast.Name) and node.func.id == "_if":
                condition, *branches = node.args
                lazy = [
                    ast.Lambda(
                        ast.arguments([], [], None, [], [], None, []),
                        branch,
                    )
                    for branch in branches
                ]
                node.args = [condition, *lazy]
            return node

    transformed: ast.Expression = Logical().visit(tree)
    return ast.fix_missing_locations(transformed)


def _and(*values: Any) -> Any:
    return MISSING if MISSING in values else int(all(values))


def _or(*values: Any) -> Any:
    return MISSING if MISSING in values else int(any(values))


def evaluate(expression: str, metrics: Mapping[str, float | None]) -> Any:
    """The expression's value for one period; ``MISSING`` where CloudWatch has no datapoint."""
    text = expression
    for pattern, replacement in _TOKENS:
        text = re.sub(pattern, replacement, text)
    tree = _compare(ast.parse(text, mode="eval"))
    names: dict[str, Any] = {
        key: MISSING if value is None else value for key, value in metrics.items()
    }
    names.update(_if=_if, _fill=_fill, _and=_and, _or=_or)
    code = compile(tree, "<metric math>", "eval")
    # One namespace as globals: the lazy branches (lambdas) resolve names there.
    return eval(code, {"__builtins__": {}, **names})
