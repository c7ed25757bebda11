"""Where the program reads the configured bundles: the bucket (moto) or local folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BUCKET, PROJECT
from weightshift.bundles.catalog import CatalogError, LocalCatalog, S3Catalog
from weightshift.bundles.manifest import load_local
from weightshift.bundles.store import BundleStore, blob_key
from weightshift.bundles.versioning import BundleId, Version

EXAMPLE = PROJECT / "bundles" / "support-assistant" / "v1.5.0"


def test_the_bucket_catalog_reads_the_manifest_and_generation_of_a_published_bundle(
    s3: Any,
) -> None:
    published = BundleStore(BUCKET, s3).publish(
        load_local(EXAMPLE), Version(1, 5, 0), allow_placeholders=True
    )
    resolved = S3Catalog(BUCKET, s3).resolve(published.id)
    assert resolved.id == published.id
    assert resolved.generation.temperature == 0.2
    assert resolved.blob_digests == sorted(load_local(EXAMPLE).manifest(Version(1, 5, 0)).blobs())


def test_the_bucket_catalog_refuses_unpublished_and_mismatched_ids(s3: Any) -> None:
    published = BundleStore(BUCKET, s3).publish(
        load_local(EXAMPLE), Version(1, 5, 0), allow_placeholders=True
    )
    catalog = S3Catalog(BUCKET, s3)
    with pytest.raises(CatalogError, match=r"is not published.*Publish the bundle before"):
        catalog.resolve(BundleId.parse("support-assistant/v9.9.9-0123456789ab"))
    wrong = BundleId(published.id.name, published.id.version, "0123456789ab")
    with pytest.raises(CatalogError, match="the hash in the id does not match"):
        catalog.resolve(wrong)


def test_the_bucket_catalog_refuses_a_tampered_generation_blob(s3: Any) -> None:
    published = BundleStore(BUCKET, s3).publish(
        load_local(EXAMPLE), Version(1, 5, 0), allow_placeholders=True
    )
    manifest = load_local(EXAMPLE).manifest(Version(1, 5, 0))
    sha = manifest.by_path()["config/generation.json"].sha256
    # The bucket policy forbids this in AWS; the emulator has no policy, which is the point:
    # even a written-over blob is never trusted.
    s3.put_object(Bucket=BUCKET, Key=blob_key(sha), Body=b'{"temperature": 2}')
    resolved = S3Catalog(BUCKET, s3).resolve(published.id)
    assert resolved.generation.temperature == 0.2  # the pinned version is read, not the newest


def test_the_local_catalog_checks_the_hash_and_says_where_to_put_a_bundle(
    tmp_path: Path,
) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "support-assistant" / "v1.5.0")
    bundle = load_local(EXAMPLE).manifest(Version(1, 5, 0)).id
    assert LocalCatalog(tmp_path).resolve(bundle).id == bundle
    missing = BundleId(bundle.name, Version(2, 0, 0), bundle.digest)
    with pytest.raises(
        CatalogError, match=r"not in the offline catalog: .*v2\.0\.0 does not exist"
    ):
        LocalCatalog(tmp_path).resolve(missing)
    generation = tmp_path / "support-assistant/v1.5.0/config/generation.json"
    generation.write_text(json.dumps({"temperature": 1.5, "top_p": 0.9, "max_tokens": 64}))
    with pytest.raises(CatalogError, match="the hash in the configured id does not match"):
        LocalCatalog(tmp_path).resolve(bundle)


def test_outside_synth_the_program_reads_bundles_from_the_bucket(s3: Any) -> None:
    import contextvars

    from weightshift.bundles.catalog import catalog_for

    published = BundleStore(BUCKET, s3).publish(
        load_local(EXAMPLE), Version(1, 5, 0), allow_placeholders=True
    )
    catalog = contextvars.Context().run(catalog_for, BUCKET, "us-east-1")
    assert isinstance(catalog, S3Catalog)
    assert catalog.resolve(published.id).generation.temperature == 0.2
