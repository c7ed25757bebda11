"""The artifact store: where every bundle version lives, immutable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components.iam import policy_document, policy_size
from components.log_bucket import LogBucket, LogBucketArgs, make_private
from weightshift.bundles.store import blob_key, manifest_key
from weightshift.bundles.versioning import BundleId
from weightshift.config import ArtifactsConfig
from weightshift.facts import IAM_ROLE_INLINE_POLICY_CHARACTERS

PUBLISHED_PREFIXES = ("blobs/", "manifests/")


@dataclass(frozen=True)
class ArtifactStoreArgs:
    settings: ArtifactsConfig
    region: str
    partition: str


def bucket_policy(bucket_arn: str, key_arn: str) -> str:
    """Deny anything that could weaken a published bundle, whoever asks."""
    return policy_document(
        [*encryption_denials(bucket_arn, key_arn), *immutability_denials(bucket_arn)]
    )


def encryption_denials(bucket_arn: str, key_arn: str) -> list[dict[str, Any]]:
    """TLS only, and every object encrypted with this key (SSE-KMS)."""
    return [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, f"{bucket_arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
        # Encryption headers may be left out (the bucket default, SSE-KMS with this key,
        # applies; UploadPart never carries them); given, they must name this key. A
        # ...IfExists operator would not do: it is true when the header is absent.
        {
            "Sid": "DenyPutsWithoutKms",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": f"{bucket_arn}/*",
            "Condition": {
                "Null": {"s3:x-amz-server-side-encryption": "false"},
                "StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"},
            },
        },
        {
            "Sid": "DenyPutsWithAnotherKey",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": f"{bucket_arn}/*",
            "Condition": {
                "Null": {"s3:x-amz-server-side-encryption-aws-kms-key-id": "false"},
                "StringNotEquals": {"s3:x-amz-server-side-encryption-aws-kms-key-id": key_arn},
            },
        },
        {
            # aws:kms without a key id means the AWS managed key, not this one.
            "Sid": "DenyPutsWithTheAwsManagedKey",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": f"{bucket_arn}/*",
            "Condition": {
                "StringEquals": {"s3:x-amz-server-side-encryption": "aws:kms"},
                "Null": {"s3:x-amz-server-side-encryption-aws-kms-key-id": "true"},
            },
        },
    ]


def immutability_denials(bucket_arn: str) -> list[dict[str, Any]]:
    """A published object is never written over, deleted, or freed of its lock."""
    published = [f"{bucket_arn}/{prefix}*" for prefix in PUBLISHED_PREFIXES]
    return [
        {
            # Objects are only ever created, never written over: PutObject and
            # CompleteMultipartUpload must carry If-None-Match (the multipart steps that
            # cannot carry it are exempt by s3:ObjectCreationOperation).
            "Sid": "DenyOverwrites",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": published,
            "Condition": {
                "Null": {"s3:if-none-match": "true"},
                "Bool": {"s3:ObjectCreationOperation": "true"},
            },
        },
        {
            "Sid": "DenyDeletesAndLockBypass",
            "Effect": "Deny",
            "Principal": "*",
            "Action": [
                "s3:DeleteObject",
                "s3:DeleteObjectVersion",
                "s3:BypassGovernanceRetention",
                "s3:PutObjectLegalHold",
            ],
            "Resource": published,
        },
    ]


def bundle_read_policy(
    bucket_arn: str,
    key_arn: str,
    region: str,
    bundle: BundleId,
    blob_digests: Sequence[str],
    *,
    reserve: int = 0,
) -> str:
    """Read one bundle: its manifest and the blobs it lists, decrypted through S3 only.

    Every blob by name while that fits IAM's limit on a role's inline policies
    (``facts.IAM_ROLE_INLINE_POLICY_CHARACTERS``, less ``reserve`` for the role's others);
    a bundle of many files (over a hundred or so) gets the content-addressed blob prefix
    instead: a pod can then read other bundles' blobs of this bucket, but only by knowing
    their content's hash, and the manifest is still its own alone.
    """
    manifest = manifest_key(bundle.name, bundle.version)
    blobs = [f"{bucket_arn}/{blob_key(digest)}" for digest in sorted(set(blob_digests))]
    exact = _bundle_read_statements(bucket_arn, key_arn, region, manifest, blobs)
    if policy_size(exact) <= IAM_ROLE_INLINE_POLICY_CHARACTERS - reserve:
        return exact
    return _bundle_read_statements(
        bucket_arn, key_arn, region, manifest, [f"{bucket_arn}/{blob_key('*')}"]
    )


def _bundle_read_statements(
    bucket_arn: str, key_arn: str, region: str, manifest: str, blobs: list[str]
) -> str:
    objects = [f"{bucket_arn}/{manifest}", *blobs]
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ReadBundleObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": objects,
        },
        {
            "Sid": "FindTheManifestVersion",
            "Effect": "Allow",
            "Action": "s3:ListBucketVersions",
            "Resource": bucket_arn,
            "Condition": {"StringEquals": {"s3:prefix": manifest}},
        },
        {
            "Sid": "DecryptThroughS3",
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": key_arn,
            "Condition": {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}},
        },
    ]
    return policy_document(statements)


class ArtifactStore(pulumi.ComponentResource):
    """The bucket bundles are published to: versioned, Object Lock with a default retention
    (COMPLIANCE in production), SSE-KMS with a customer managed key and bucket key, every
    public access blocked, bucket-owner-enforced, TLS only, KMS-only puts, no overwrites,
    no deletes, incomplete multipart uploads aborted after 7 days, and server access logs
    to a separate bucket (a lock-enabled bucket cannot receive access logs).

    Children: ``{name}-key`` KMS Key (rotated) and ``{name}-key`` Alias, ``{name}`` Bucket
    (protected), ``{name}-versioning``, ``{name}-object-lock``, ``{name}-encryption``,
    ``{name}-public-access``, ``{name}-ownership``, ``{name}-lifecycle``, ``{name}-logging``,
    ``{name}-policy``, and ``{name}-access-logs`` LogBucket.
    """

    bucket_name: pulumi.Output[str]
    """The artifact bucket's name: pass it to ``weightshift bundle publish --bucket``."""
    bucket_arn: pulumi.Output[str]
    """The artifact bucket's ARN."""
    key_arn: pulumi.Output[str]
    """The customer managed KMS key that encrypts every object."""
    ready: list[pulumi.Resource]
    """Every setting that must hold before a bundle is published or read: depend on these."""

    def __init__(
        self, name: str, args: ArtifactStoreArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("weightshift:index:ArtifactStore", name, None, opts)
        self._region = args.region
        settings = args.settings
        keep = pulumi.ResourceOptions(parent=self, protect=True, retain_on_delete=True)
        key = self._key(name, keep)
        bucket = aws.s3.Bucket(
            name,
            bucket=settings.bucket_name,
            object_lock_enabled=True,
            force_destroy=False,
            opts=keep,
        )
        versioning, lock = self._object_lock(name, bucket, settings)
        encryption = self._encryption(name, bucket, key)
        ownership, public = make_private(name, bucket, pulumi.ResourceOptions(parent=self))
        lifecycle = self._lifecycle(name, bucket)
        logging = self._access_logging(name, bucket, args)
        policy = aws.s3.BucketPolicy(
            f"{name}-policy",
            bucket=bucket.id,
            policy=pulumi.Output.all(bucket.arn, key.arn).apply(
                lambda arns: bucket_policy(arns[0], arns[1])
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[public]),
        )
        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.key_arn = key.arn
        self.ready = [versioning, lock, encryption, public, ownership, lifecycle, logging, policy]
        self.register_outputs(
            {
                "bucket_name": self.bucket_name,
                "bucket_arn": self.bucket_arn,
                "key_arn": self.key_arn,
            }
        )

    def _key(self, name: str, keep: pulumi.ResourceOptions) -> aws.kms.Key:
        """The customer managed key (rotated, kept) and its alias."""
        key = aws.kms.Key(
            f"{name}-key",
            description="weightshift artifact bundles",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            opts=keep,
        )
        aws.kms.Alias(
            f"{name}-key",
            name_prefix="alias/weightshift-artifacts-",
            target_key_id=key.key_id,
            opts=pulumi.ResourceOptions(parent=self),
        )
        return key

    def _object_lock(
        self, name: str, bucket: aws.s3.Bucket, settings: ArtifactsConfig
    ) -> tuple[aws.s3.BucketVersioning, aws.s3.BucketObjectLockConfiguration]:
        """Versioning, and Object Lock's default retention over it."""
        versioning = aws.s3.BucketVersioning(
            f"{name}-versioning",
            bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(
                status="Enabled"
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        lock = aws.s3.BucketObjectLockConfiguration(
            f"{name}-object-lock",
            bucket=bucket.id,
            object_lock_enabled="Enabled",
            rule=aws.s3.BucketObjectLockConfigurationRuleArgs(
                default_retention=aws.s3.BucketObjectLockConfigurationRuleDefaultRetentionArgs(
                    mode=settings.retention_mode, days=settings.retention_days
                )
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]),
        )
        return versioning, lock

    def _encryption(
        self, name: str, bucket: aws.s3.Bucket, key: aws.kms.Key
    ) -> aws.s3.BucketServerSideEncryptionConfiguration:
        return aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=bucket.id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                        sse_algorithm="aws:kms", kms_master_key_id=key.arn
                    ),
                    bucket_key_enabled=True,
                )
            ],
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _lifecycle(self, name: str, bucket: aws.s3.Bucket) -> aws.s3.BucketLifecycleConfiguration:
        """Incomplete multipart uploads aborted after 7 days."""
        return aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=bucket.id,
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="abort-incomplete-uploads",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                    abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                        days_after_initiation=7
                    ),
                )
            ],
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _access_logging(
        self, name: str, bucket: aws.s3.Bucket, args: ArtifactStoreArgs
    ) -> aws.s3.BucketLogging:
        """Server access logs, to a bucket of their own (a lock-enabled bucket cannot
        receive them)."""
        logs = LogBucket(
            f"{name}-access-logs",
            LogBucketArgs(
                region=args.region,
                partition=args.partition,
                retention_days=args.settings.access_log_retention_days,
                s3_prefix="s3",
                s3_sources=[bucket.arn],
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        return aws.s3.BucketLogging(
            f"{name}-logging",
            bucket=bucket.id,
            target_bucket=logs.bucket,
            target_prefix="s3/",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[logs.ready]),
        )

    def read_policy(self, bundle: BundleId, blob_digests: Sequence[str]) -> pulumi.Output[str]:
        """A read-only IAM policy document for one bundle (its manifest and blobs)."""
        return pulumi.Output.all(self.bucket_arn, self.key_arn).apply(
            lambda arns: bundle_read_policy(arns[0], arns[1], self._region, bundle, blob_digests)
        )
