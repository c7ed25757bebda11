"""The building blocks every section shares: the base model, the strict number and flag
types, and the validators of CIDR blocks, AWS ids, log retentions, chart versions and
images.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Strict
from pydantic.alias_generators import to_camel

from weightshift.facts import CHARTS, CLOUDWATCH_LOG_RETENTION_DAYS

_IMAGE_BY_DIGEST = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")


class Section(BaseModel):
    """A config section: camelCase keys, unknown keys refused, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def cidr_block(value: str) -> str:
    """A CIDR block in canonical form, or an error that shows the block meant."""
    try:
        return str(ipaddress.IPv4Network(value, strict=True))
    except ValueError as exc:
        try:
            meant = f"; did you mean {ipaddress.IPv4Network(value, strict=False)}?"
        except ValueError:
            meant = ""
        raise ValueError(f"not an IPv4 CIDR block ({exc}){meant}") from None


def _number(value: object) -> object:
    """Numbers are numbers: YAML reads yes/no/on/off as booleans, and a lax model would
    take ``stage: yes`` for stage 1 or ``replicas: on`` for one replica."""
    if isinstance(value, bool):
        raise ValueError(
            f"a number, not the boolean {str(value).lower()} (YAML reads yes, no, on, off, "
            "true and false as booleans): write the number"
        )
    if isinstance(value, str):
        raise ValueError(f"a number, not the string {value!r}: write it without quotes")
    return value


def _flag(value: object) -> object:
    if not isinstance(value, bool):
        raise ValueError(f"true or false, not {value!r}")
    return value


Int = Annotated[int, BeforeValidator(_number), Strict()]
"""An integer in config: never a boolean, a string or a fraction."""
Float = Annotated[float, BeforeValidator(_number), Strict()]
"""A number in config: never a boolean or a string."""
Flag = Annotated[bool, BeforeValidator(_flag)]


def _log_retention(days: int) -> int:
    if days not in CLOUDWATCH_LOG_RETENTION_DAYS:
        above = [d for d in CLOUDWATCH_LOG_RETENTION_DAYS if d >= days]
        nearest = f"; the next allowed value is {above[0]}" if above else ""
        raise ValueError(
            f"CloudWatch Logs keeps logs only for "
            f"{', '.join(str(d) for d in CLOUDWATCH_LOG_RETENTION_DAYS)} days{nearest}"
        )
    return days


LogRetentionDays = Annotated[Int, AfterValidator(_log_retention)]
"""A CloudWatch log group's retention: one of the values CloudWatch accepts."""


def chart_version(chart: str) -> Any:
    """A pinned chart version whose scheduling defaults are recorded in ``facts.py``."""

    def check(value: str) -> str:
        known = sorted(CHARTS[chart])
        if value not in known:
            raise ValueError(
                f"{chart} {value} is not a version weightshift has checked (its default "
                f"values decide where its pods run); allowed: {', '.join(known)}"
            )
        return value

    return AfterValidator(check)


def aws_ids(value: tuple[str, ...], prefix: str, what: str) -> tuple[str, ...]:
    """AWS resource ids such as ``subnet-0123abcd``: the prefix and 8 to 17 hex digits."""
    for item in value:
        if not re.fullmatch(rf"{prefix}-[0-9a-f]{{8,17}}", item):
            raise ValueError(f"{item!r} is not a {what} id ({prefix}-0123abcd...)")
    return value


def pinned_image(value: str) -> str:
    """A container image pinned by digest."""
    if not _IMAGE_BY_DIGEST.match(value):
        raise ValueError(
            "an image pinned by digest, REPOSITORY@sha256:<64 hex> (a tag can move; "
            "`docker buildx imagetools inspect IMAGE:TAG` prints the digest)"
        )
    return value
