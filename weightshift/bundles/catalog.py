"""Where the program reads the manifests of the bundles it deploys.

The inference stacks need, at deploy time, a bundle's manifest (the blobs its pods may
read, its size) and its generation parameters (the server's arguments, visible in review).
``pulumi up`` and ``pulumi preview`` read them from the artifact bucket with the deployer's
credentials (:class:`S3Catalog`); ``weightshift synth`` and ``plan`` read them from local
bundle folders, ``<root>/<name>/v<X.Y.Z>/`` (:class:`LocalCatalog`), so reviews need no
credentials. Either way the manifest's digest must match the hash in the configured id.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import boto3
from botocore.exceptions import BotoCoreError
from pydantic import BaseModel

from weightshift.bundles import strict_json
from weightshift.bundles.manifest import Manifest, load_local
from weightshift.bundles.schemas import BundleError, Generation, Routing, Safety
from weightshift.bundles.store import BundleStore, StoreError
from weightshift.bundles.versioning import BundleId

GENERATION_PATH = "config/generation.json"
SAFETY_PATH = "config/safety.json"
ROUTING_PATH = "config/routing.json"


class CatalogError(Exception):
    """A configured bundle cannot be read; the message says which and what to do."""


@dataclass(frozen=True)
class ResolvedBundle:
    """What the program needs of one bundle."""

    id: BundleId
    manifest: Manifest
    generation: Generation
    safety: Safety
    """Becomes the bundle's Bedrock guardrail."""
    routing: Routing
    """Its request timeout sizes the pods' grace period."""

    @property
    def blob_digests(self) -> list[str]:
        return sorted(self.manifest.blobs())


class BundleCatalog(Protocol):
    def resolve(self, bundle: BundleId) -> ResolvedBundle: ...


_M = TypeVar("_M", bound=BaseModel)


def _part(bundle: BundleId, path: str, data: bytes, model: type[_M]) -> _M:
    try:
        return model.model_validate(strict_json.loads(data))
    except ValueError as exc:
        raise CatalogError(f"{bundle}: {path} is not valid ({exc}).") from None


def _resolved(bundle: BundleId, manifest: Manifest, read: Callable[[str], bytes]) -> ResolvedBundle:
    """What the program needs of ``bundle``, its small JSON parts read with ``read``."""
    return ResolvedBundle(
        bundle,
        manifest,
        _part(bundle, GENERATION_PATH, read(GENERATION_PATH), Generation),
        _part(bundle, SAFETY_PATH, read(SAFETY_PATH), Safety),
        _part(bundle, ROUTING_PATH, read(ROUTING_PATH), Routing),
    )


def _check_id(bundle: BundleId, manifest: Manifest, where: str) -> None:
    if manifest.id != bundle:
        raise CatalogError(
            f"{where} holds {manifest.id}, not {bundle}: the hash in the configured id does not "
            "match the bundle's content. Use the id `weightshift bundle publish` printed."
        )


class LocalCatalog:
    """Bundle folders on disk: ``<root>/<name>/v<X.Y.Z>/`` (the offline catalog)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[BundleId, ResolvedBundle] = {}

    def resolve(self, bundle: BundleId) -> ResolvedBundle:
        if bundle in self._cache:
            return self._cache[bundle]
        folder = self.root / bundle.name / f"v{bundle.version}"
        if not folder.is_dir():
            raise CatalogError(
                f"{bundle} is not in the offline catalog: {folder} does not exist. Put the "
                "bundle folder there (small placeholder weights will do), or point --catalog "
                "at the folder that holds it."
            )
        try:
            local = load_local(folder)
        except BundleError as error:
            raise CatalogError(str(error)) from None
        manifest = local.manifest(bundle.version)
        _check_id(bundle, manifest, str(folder))
        resolved = _resolved(bundle, manifest, lambda path: (folder / path).read_bytes())
        self._cache[bundle] = resolved
        return resolved


class S3Catalog:
    """The artifact bucket, through :class:`weightshift.bundles.store.BundleStore`."""

    def __init__(self, bucket: str, client: Any = None) -> None:
        self.store = BundleStore(bucket, client)

    def resolve(self, bundle: BundleId) -> ResolvedBundle:
        try:
            published = self.store.resolve(bundle)
        except StoreError as error:
            raise CatalogError(
                f"{error} Publish the bundle before naming it in the stack config."
            ) from None
        except BotoCoreError as error:
            raise CatalogError(
                f"cannot reach the artifact bucket {self.store.bucket} to read {bundle} "
                f"({error}): check the AWS credentials and region."
            ) from None

        def read(path: str) -> bytes:
            try:
                return self.store.read_file(published, path)
            except StoreError as error:
                raise CatalogError(str(error)) from None

        return _resolved(bundle, published.manifest, read)


OFFLINE_CATALOG: ContextVar[BundleCatalog | None] = ContextVar("OFFLINE_CATALOG", default=None)
"""Set by ``weightshift synth`` for the run it makes; unset under ``pulumi up``."""


def catalog_for(bucket: str, region: str) -> BundleCatalog:
    """The offline catalog during ``weightshift synth``; otherwise the artifact bucket (in
    the stack's region, whatever the shell's default)."""
    offline = OFFLINE_CATALOG.get()
    if offline is not None:
        return offline
    return S3Catalog(bucket, boto3.client("s3", region_name=region))
