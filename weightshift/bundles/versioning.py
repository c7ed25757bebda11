"""Bundle ids: ``name/vMAJOR.MINOR.PATCH-hash``.

A bundle id names one immutable artifact bundle. The semantic version says how
far the behaviour may have moved (see :class:`Bump`); the hash is the first 12
hex characters of the bundle digest, so two different bundles can never share
an id even if someone reuses a version number by mistake.

People also name a published bundle by ``name/vMAJOR.MINOR.PATCH`` alone
(:class:`BundleRef`): a version is published once, so its manifest supplies the hash.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from functools import total_ordering

HASH_LENGTH = 12
NAME_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?"
_NUMBER = r"0|[1-9][0-9]{0,8}"
_VERSION_RE = re.compile(rf"^v?(?P<major>{_NUMBER})\.(?P<minor>{_NUMBER})\.(?P<patch>{_NUMBER})$")
_NAMED_VERSION = (
    rf"(?P<name>{NAME_PATTERN})/v(?P<major>{_NUMBER})\.(?P<minor>{_NUMBER})\.(?P<patch>{_NUMBER})"
)
_HASH = rf"(?P<hash>[0-9a-f]{{{HASH_LENGTH}}})"
_ID_RE = re.compile(rf"^{_NAMED_VERSION}-{_HASH}$")
_REF_RE = re.compile(rf"^{_NAMED_VERSION}(?:-{_HASH})?$")
_NAME_RE = re.compile(rf"^{NAME_PATTERN}$")

ID_FORMAT_HELP = (
    f"expected name/vMAJOR.MINOR.PATCH-hash, e.g. support-assistant/v1.4.2-3f9a1c2b7d4e: "
    f"a name of lowercase letters, digits and inner hyphens (at most 40), three numbers "
    f"without leading zeros, and {HASH_LENGTH} lowercase hex characters of the bundle digest"
)


REF_FORMAT_HELP = (
    "expected name/vMAJOR.MINOR.PATCH, e.g. support-assistant/v1.4.2 (the published "
    "version), or the full id name/vMAJOR.MINOR.PATCH-hash, e.g. "
    "support-assistant/v1.4.2-3f9a1c2b7d4e"
)


class VersionError(ValueError):
    """A version or bundle id that does not follow the scheme."""


class Bump(enum.IntEnum):
    """How much a release moves behaviour; larger is bigger."""

    PATCH = 1
    MINOR = 2
    MAJOR = 3


@total_ordering
@dataclass(frozen=True)
class Version:
    """A semantic version without pre-release or build parts."""

    major: int
    minor: int
    patch: int

    def __post_init__(self) -> None:
        for part in (self.major, self.minor, self.patch):
            if part < 0:
                raise VersionError(f"version parts must not be negative, got {self}")

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION_RE.match(text)
        if match is None:
            raise VersionError(
                f"{text!r} is not a version: expected MAJOR.MINOR.PATCH such as 1.4.2, "
                "three numbers without leading zeros"
            )
        return cls(int(match["major"]), int(match["minor"]), int(match["patch"]))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def _key(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def bumped(self, bump: Bump) -> Version:
        """The smallest version that is a ``bump`` above this one."""
        if bump is Bump.MAJOR:
            return Version(self.major + 1, 0, 0)
        if bump is Bump.MINOR:
            return Version(self.major, self.minor + 1, 0)
        return Version(self.major, self.minor, self.patch + 1)

    def bump_to(self, newer: Version) -> Bump | None:
        """The size of the step from this version to ``newer``; None unless it is an increase."""
        if newer <= self:
            return None
        if newer.major != self.major:
            return Bump.MAJOR
        if newer.minor != self.minor:
            return Bump.MINOR
        return Bump.PATCH


@total_ordering
@dataclass(frozen=True)
class BundleId:
    """``name/vMAJOR.MINOR.PATCH-hash``, ordered by name, then version, then hash."""

    name: str
    version: Version
    digest: str

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise VersionError(f"{self.name!r} is not a model name: {ID_FORMAT_HELP}")
        if not re.fullmatch(rf"[0-9a-f]{{{HASH_LENGTH}}}", self.digest):
            raise VersionError(f"{self.digest!r} is not a bundle hash: {ID_FORMAT_HELP}")

    @classmethod
    def parse(cls, text: str) -> BundleId:
        match = _ID_RE.match(text)
        if match is None:
            raise VersionError(f"{text!r} is not a bundle id: {ID_FORMAT_HELP}")
        version = Version(int(match["major"]), int(match["minor"]), int(match["patch"]))
        return cls(match["name"], version, match["hash"])

    def __str__(self) -> str:
        return f"{self.name}/v{self.version}-{self.digest}"

    def _key(self) -> tuple[str, Version, str]:
        return (self.name, self.version, self.digest)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, BundleId):
            return NotImplemented
        return self._key() < other._key()


@dataclass(frozen=True)
class BundleRef:
    """A published bundle as people name it: ``name/vX.Y.Z``, or its full id."""

    name: str
    version: Version
    digest: str | None = None
    """The id's hash; None when only the version was given."""

    @classmethod
    def parse(cls, text: str) -> BundleRef:
        match = _REF_RE.match(text)
        if match is None:
            raise VersionError(f"{text!r} is not a bundle id: {REF_FORMAT_HELP}")
        version = Version(int(match["major"]), int(match["minor"]), int(match["patch"]))
        return cls(match["name"], version, match["hash"])

    def __str__(self) -> str:
        tail = f"-{self.digest}" if self.digest else ""
        return f"{self.name}/v{self.version}{tail}"


def is_model_name(text: str) -> bool:
    return bool(_NAME_RE.match(text))
