"""Loading the stack config: :func:`load` validates fully qualified keys (``weightshift:*``,
``aws:region``) into a :class:`StackConfig`, or raises one :class:`ConfigError` that lists
every :class:`Problem` by key, value and what is allowed; an unknown key, at the top or in
any section, gets the keys allowed there and the closest one.
"""

from __future__ import annotations

import difflib
import json
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from weightshift.config.stack import CONFIG_KEYS, NAMESPACE, StackConfig

_OBJECT_KEYS = frozenset(
    {
        "blue",
        "green",
        "rollout",
        "network",
        "traffic",
        "artifacts",
        "cluster",
        "serving",
        "rollback",
        "tags",
    }
)


@dataclass(frozen=True)
class Problem:
    key: str
    value: Any
    message: str

    def __str__(self) -> str:
        if self.value is _WHOLE:
            return f"{self.key}: {self.message}"
        shown = "missing" if self.value is _MISSING else f"= {json.dumps(self.value, default=str)}"
        return f"{self.key} {shown}: {self.message}"


_MISSING: Any = object()
_WHOLE: Any = object()


class ConfigError(ValueError):
    """An invalid stack config; ``problems`` lists every one found."""

    def __init__(self, problems: list[Problem], source: str = "stack config") -> None:
        self.problems = problems
        self.source = source
        listed = "; ".join(str(p) for p in problems)
        super().__init__(
            f"Invalid {source}: {listed}. Fix the named value(s) and run again; "
            "nothing was deployed."
        )


def _key_path(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return NAMESPACE
    head, *rest = (str(part) for part in loc)
    if head == "region":
        return "aws:region"
    return f"{NAMESPACE}:{head}" + "".join(f".{part}" for part in rest)


def _lookup(data: Mapping[str, Any], loc: tuple[int | str, ...]) -> Any:
    value: Any = data
    for part in loc:
        in_mapping = isinstance(value, Mapping) and part in value
        in_sequence = (
            isinstance(value, list | tuple) and isinstance(part, int) and part < len(value)
        )
        if not (in_mapping or in_sequence):
            return _MISSING
        value = value[part]
    return value


def _message(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        *path, key = error["loc"]
        section = _section(tuple(path))
        if section is not None:
            return unknown_key(str(key), _keys(section))
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def unknown_key(key: str, allowed: Sequence[str]) -> str:
    """What an unknown ``key`` gets: the closest allowed key, if one is close, and all of them."""
    close = difflib.get_close_matches(key, allowed, n=1)
    meant = f"did you mean {close[0]}? " if close else ""
    return f"unknown key; {meant}allowed: {', '.join(allowed)}"


def _section(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model of the section at ``loc`` (keys as written, list positions skipped)."""
    model: type[BaseModel] | None = StackConfig
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        model = _model_in(field.annotation) if field is not None else None
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The section model a field holds: itself, or inside ``X | None`` or ``tuple[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def load(values: Mapping[str, Any], source: str = "stack config") -> StackConfig:
    """Validate fully qualified config (``weightshift:model``, ``aws:region``, ...).

    Object-valued keys may be given decoded (from YAML) or as JSON text (as the
    Pulumi engine hands them to the program).
    """
    problems: list[Problem] = []
    data: dict[str, Any] = {}
    for full_key, raw in values.items():
        if raw is None:
            continue
        namespace, _, key = full_key.partition(":")
        if full_key == "aws:region":
            data["region"] = raw
        elif namespace != NAMESPACE:
            continue
        elif key not in CONFIG_KEYS:
            problems.append(Problem(full_key, raw, unknown_key(key, CONFIG_KEYS)))
        elif key in _OBJECT_KEYS and isinstance(raw, str):
            try:
                data[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                problems.append(Problem(full_key, raw, f"not a JSON object ({exc.msg})"))
        else:
            data[key] = raw
    if problems:
        raise ConfigError(problems, source)
    try:
        return StackConfig.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            value = _lookup(data, loc) if loc else _WHOLE
            problems.append(Problem(_key_path(loc), value, _message(error)))
        raise ConfigError(problems, source) from None
