"""Bundle ids: parsing, formatting, ordering, bump sizes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightshift.bundles.versioning import Bump, BundleId, BundleRef, Version, VersionError

names = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?\Z")
numbers = st.integers(min_value=0, max_value=999_999_999)
versions = st.builds(Version, numbers, numbers, numbers)
hashes = st.from_regex(r"\A[0-9a-f]{12}\Z")
ids = st.builds(BundleId, names, versions, hashes)


@given(ids)
def test_format_then_parse_is_identity(bundle: BundleId) -> None:
    assert BundleId.parse(str(bundle)) == bundle


@given(versions, versions)
def test_version_order_is_numeric_not_lexical(a: Version, b: Version) -> None:
    assert (a < b) == ((a.major, a.minor, a.patch) < (b.major, b.minor, b.patch))
    assert (a == b) == (str(a) == str(b))


@given(st.lists(ids, min_size=2, max_size=20))
def test_sorting_ids_is_a_total_order(bundles: list[BundleId]) -> None:
    ordered = sorted(bundles)
    for a, b in itertools.pairwise(ordered):
        assert a <= b
        assert not b < a


@given(versions, st.sampled_from(list(Bump)))
def test_bumped_is_the_smallest_version_of_that_size(v: Version, bump: Bump) -> None:
    newer = v.bumped(bump)
    assert newer > v
    assert v.bump_to(newer) is bump


def test_examples_order_as_people_expect() -> None:
    assert Version.parse("1.10.0") > Version.parse("1.9.9")
    assert Version.parse("2.0.0") > Version.parse("1.99.99")
    assert Version.parse("v1.2.3") == Version(1, 2, 3)
    assert Version(1, 2, 3).bump_to(Version(1, 2, 3)) is None
    assert Version(1, 2, 3).bump_to(Version(1, 3, 7)) is Bump.MINOR
    assert Version(1, 2, 3).bump_to(Version(1, 1, 0)) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "support-assistant",
        "support-assistant/1.2.3-3f9a1c2b7d4e",
        "support-assistant/v1.2-3f9a1c2b7d4e",
        "support-assistant/v01.2.3-3f9a1c2b7d4e",
        "support-assistant/v1.2.3",
        "support-assistant/v1.2.3-3F9A1C2B7D4E",
        "support-assistant/v1.2.3-3f9a1c2b7d",
        "Support/v1.2.3-3f9a1c2b7d4e",
        "-bad/v1.2.3-3f9a1c2b7d4e",
        "a/b/v1.2.3-3f9a1c2b7d4e",
        "support-assistant/v1.2.3-3f9a1c2b7d4e ",
    ],
)
def test_malformed_ids_are_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(VersionError, match=r"name/vMAJOR\.MINOR\.PATCH-hash"):
        BundleId.parse(text)


@given(st.text(max_size=60))
def test_parse_never_crashes_on_arbitrary_text(text: str) -> None:
    try:
        parsed = BundleId.parse(text)
    except VersionError:
        return
    assert str(parsed) == text


@given(ids)
def test_a_bundle_is_named_by_its_id_or_by_its_version_alone(bundle: BundleId) -> None:
    full = BundleRef.parse(str(bundle))
    assert (full.name, full.version, full.digest) == (bundle.name, bundle.version, bundle.digest)
    short = BundleRef.parse(f"{bundle.name}/v{bundle.version}")
    assert (short.name, short.version, short.digest) == (bundle.name, bundle.version, None)
    assert str(short) == f"{bundle.name}/v{bundle.version}"
    assert str(full) == str(bundle)


@pytest.mark.parametrize(
    "text",
    ["support-assistant", "support-assistant/1.2.3", "support-assistant/v1.2", "./bundle"],
)
def test_a_malformed_reference_names_both_accepted_forms(text: str) -> None:
    with pytest.raises(VersionError) as refused:
        BundleRef.parse(text)
    message = str(refused.value)
    assert f"{text!r} is not a bundle id" in message
    assert "name/vMAJOR.MINOR.PATCH, e.g. support-assistant/v1.4.2" in message
    assert "name/vMAJOR.MINOR.PATCH-hash" in message
