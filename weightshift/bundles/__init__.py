"""The artifact bundle: its layout and schemas, versioning, manifest and diff, the S3 store
(publish, upload, pull, verify) and the catalog the program reads bundles from.

Imports: the standard library, boto3, pydantic, ``weightshift.console`` for progress and
``weightshift.jsondiff``; nothing of Pulumi, the rollout, the preview or the command line.
"""
