"""A local S3 emulator (moto server) with an artifact bucket, for end-to-end runs of the CLI.

Used by the CLI tests and by scripts/bench_bundle.py. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "us-east-1"


@dataclass(frozen=True)
class Emulator:
    endpoint: str
    bucket: str

    def env(self) -> dict[str, str]:
        """What a shell needs to point the AWS SDK (and so weightshift) at the emulator."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self) -> S3Client:
        client: S3Client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        return client


def make_artifact_bucket(s3: Any, bucket: str, days: int = 30, kms: Any = None) -> None:
    """Create ``bucket`` as the ArtifactStore makes it: Object Lock with a COMPLIANCE default
    retention of ``days``, and (given a KMS client) SSE-KMS with a bucket key."""
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": days}},
        },
    )
    if kms is None:
        return
    key = kms.create_key()["KeyMetadata"]["Arn"]
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": key,
                    },
                    "BucketKeyEnabled": True,
                }
            ]
        },
    )


@contextmanager
def artifact_bucket(
    bucket: str = "weightshift-artifacts-e2e", days: int = 30
) -> Iterator[Emulator]:
    """A moto server on a free loopback port with an Object-Locked, KMS-encrypted bucket."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        emulator = Emulator(f"http://{host}:{port}", bucket)
        s3 = emulator.client()
        kms = boto3.client(
            "kms",
            endpoint_url=emulator.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        make_artifact_bucket(s3, bucket, days, kms)
        yield emulator
    finally:
        server.stop()
