"""A private, TLS-only S3 bucket that AWS services deliver logs into."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

ELB_LOG_ACCOUNTS = {
    "us-east-1": "127311923021",
    "us-east-2": "033677994240",
    "us-west-1": "027434742980",
    "us-west-2": "797873946194",
    "af-south-1": "098369216593",
    "ap-east-1": "754344448648",
    "ap-south-1": "718504428378",
    "ap-northeast-1": "582318560864",
    "ap-northeast-2": "600734575887",
    "ap-northeast-3": "383597477331",
    "ap-southeast-1": "114774131450",
    "ap-southeast-2": "783225319266",
    "ap-southeast-3": "589379963580",
    "ca-central-1": "985666609251",
    "eu-central-1": "054676820928",
    "eu-west-1": "156460612806",
    "eu-west-2": "652711504416",
    "eu-west-3": "009996457667",
    "eu-south-1": "635631232127",
    "eu-north-1": "897822967062",
    "me-south-1": "076674570225",
    "sa-east-1": "507241528517",
    "us-gov-west-1": "048591011584",
    "us-gov-east-1": "190560391635",
}
"""Regions opened before August 2022 deliver ALB logs from these Elastic Load Balancing
accounts; newer regions use the service principal, which the policy always allows too."""


@dataclass(frozen=True)
class LogBucketArgs:
    region: str
    partition: str
    retention_days: int
    elb_prefix: str | None = None
    """Grant ALB access-log delivery under this prefix."""
    s3_prefix: str | None = None
    """Grant S3 server access-log delivery under this prefix, from ``s3_sources`` only."""
    s3_sources: Sequence[pulumi.Input[str]] = ()
    """ARNs of the buckets whose server access logs land here."""
    text_prefix: str | None = None
    """Objects that may hold personal data (the shadow pairs that keep their text) live
    under this prefix: written only with SSE-KMS under ``text_key_arn`` (the bucket policy
    refuses anything else), and their old versions removed a day after they expire."""
    text_key_arn: pulumi.Input[str] | None = None


def _policy(
    args: LogBucketArgs, bucket_arn: str, s3_sources: Sequence[str] = (), text_key_arn: str = ""
) -> str:
    statements: list[dict[str, object]] = [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, f"{bucket_arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    ]
    if args.elb_prefix is not None:
        objects = f"{bucket_arn}/{args.elb_prefix}/AWSLogs/*"
        statements.append(
            {
                "Sid": "AlbLogDelivery",
                "Effect": "Allow",
                "Principal": {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"},
                "Action": "s3:PutObject",
                "Resource": objects,
            }
        )
        account = ELB_LOG_ACCOUNTS.get(args.region)
        if account is not None:
            statements.append(
                {
                    "Sid": "AlbLogDeliveryLegacyRegion",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:{args.partition}:iam::{account}:root"},
                    "Action": "s3:PutObject",
                    "Resource": objects,
                }
            )
    if args.s3_prefix is not None and s3_sources:
        statements.append(
            {
                "Sid": "S3ServerAccessLogDelivery",
                "Effect": "Allow",
                "Principal": {"Service": "logging.s3.amazonaws.com"},
                "Action": "s3:PutObject",
                "Resource": f"{bucket_arn}/{args.s3_prefix}/*",
                "Condition": {"ArnLike": {"aws:SourceArn": sorted(s3_sources)}},
            }
        )
    if args.text_prefix is not None:
        text = f"{bucket_arn}/{args.text_prefix}/*"
        statements += [
            {
                "Sid": "DenyTextWithoutKms",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": text,
                "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}},
            },
            {
                # Absent (the AWS managed key) or another key: refused as well.
                "Sid": "DenyTextUnderAnotherKey",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": text,
                "Condition": {
                    "StringNotEquals": {
                        "s3:x-amz-server-side-encryption-aws-kms-key-id": text_key_arn
                    }
                },
            },
        ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def make_private(
    name: str, bucket: aws.s3.Bucket, opts: pulumi.ResourceOptions
) -> tuple[aws.s3.BucketOwnershipControls, aws.s3.BucketPublicAccessBlock]:
    """No ACLs (bucket owner enforced) and every public access blocked: ``{name}-ownership``
    and ``{name}-public-access``."""
    ownership = aws.s3.BucketOwnershipControls(
        f"{name}-ownership",
        bucket=bucket.id,
        rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
        opts=opts,
    )
    public = aws.s3.BucketPublicAccessBlock(
        f"{name}-public-access",
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
        opts=opts,
    )
    return ownership, public


class LogBucket(pulumi.ComponentResource):
    """Log bucket: versioned, SSE-S3 (the only encryption ALB log delivery supports),
    bucket-owner-enforced, every public access blocked, TLS-only, expiring after the
    retention period.

    Children: ``{name}`` Bucket, ``{name}-ownership`` BucketOwnershipControls,
    ``{name}-public-access`` BucketPublicAccessBlock, ``{name}-encryption``
    BucketServerSideEncryptionConfiguration, ``{name}-versioning`` BucketVersioning,
    ``{name}-lifecycle`` BucketLifecycleConfiguration, ``{name}-policy`` BucketPolicy.
    """

    bucket: pulumi.Output[str]
    """The bucket's name."""
    arn: pulumi.Output[str]
    """The bucket's ARN."""
    ready: pulumi.Resource
    """Depend on this before pointing a service at the bucket: its policy is in place."""

    def __init__(
        self, name: str, args: LogBucketArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("weightshift:index:LogBucket", name, None, opts)
        if (args.text_prefix is None) != (args.text_key_arn is None):
            raise ValueError("LogBucket: text_prefix and text_key_arn go together")
        child = pulumi.ResourceOptions(parent=self)
        bucket = aws.s3.Bucket(name, force_destroy=False, opts=child)
        _, public = make_private(name, bucket, child)
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=bucket.id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                        sse_algorithm="AES256"
                    )
                )
            ],
            opts=child,
        )
        aws.s3.BucketVersioning(
            f"{name}-versioning",
            bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(
                status="Enabled"
            ),
            opts=child,
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=bucket.id,
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-logs",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(
                        days=args.retention_days
                    ),
                    noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                        noncurrent_days=30
                    ),
                    abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                        days_after_initiation=7
                    ),
                ),
                *self._text_rules(args),
            ],
            opts=child,
        )
        policy = aws.s3.BucketPolicy(
            f"{name}-policy",
            bucket=bucket.id,
            policy=pulumi.Output.all(bucket.arn, args.text_key_arn or "", *args.s3_sources).apply(
                lambda arns: _policy(args, arns[0], arns[2:], arns[1])
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[public]),
        )
        self.bucket = bucket.bucket
        self.arn = bucket.arn
        self.text_prefix = args.text_prefix
        self.ready = policy
        self.register_outputs({"bucket": self.bucket, "arn": self.arn})

    @staticmethod
    def _text_rules(args: LogBucketArgs) -> list[aws.s3.BucketLifecycleConfigurationRuleArgs]:
        """The text prefix expires with the rest, and its old versions a day later (the
        bucket is versioned: expiring an object only hides it behind a delete marker, and the
        general rule keeps old versions 30 days; overlapping rules, S3 honours the shorter)."""
        if args.text_prefix is None:
            return []
        return [
            aws.s3.BucketLifecycleConfigurationRuleArgs(
                id="expire-text",
                status="Enabled",
                filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(
                    prefix=f"{args.text_prefix}/"
                ),
                expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(
                    days=args.retention_days
                ),
                noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                    noncurrent_days=1
                ),
            )
        ]
