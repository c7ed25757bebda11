"""A bundle's safety settings as an Amazon Bedrock Guardrail and the immutable version of it
the serving gateway pins (``ApplyGuardrail`` with ``guardrailIdentifier`` and
``guardrailVersion``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components.iam import allow
from weightshift.bundles.guardrail import DESCRIPTION_MAX, GuardrailError, guardrail_config
from weightshift.bundles.schemas import Safety


@dataclass(frozen=True)
class BundleGuardrailArgs:
    safety: Safety
    """The bundle's ``config/safety.json``; it must need a guardrail
    (``weightshift.bundles.guardrail.guardrail_config`` not ``None``)."""
    guardrail_name: str
    """``weightshift.bundles.guardrail.guardrail_name(model, stack, colour, version)``."""
    description: str
    """The guardrail's description (1..200 characters)."""
    kms_key_arn: pulumi.Input[str] | None = None
    """Customer managed key for the guardrail at rest; Bedrock's own key when ``None``."""


def version_description(digest: str) -> str:
    """The guardrail version's description: names the configuration it was cut from. A
    version is immutable and the description is a replace-only property, so a new
    configuration (new digest) replaces the version resource, i.e. creates a new version."""
    return f"weightshift safety config sha256:{digest}"


class BundleGuardrail(pulumi.ComponentResource):
    """The guardrail of one bundle version on one colour, and its published version.

    Children: ``{name}`` ``aws.bedrock.Guardrail`` (its working draft, configured from
    ``safety.json``: ``weightshift/bundles/guardrail.py``) and ``{name}``
    ``aws.bedrock.GuardrailVersion``
    (the immutable snapshot the pods call). The version's description carries the digest of
    the configuration and is replace-only, so any change of the configuration first updates
    the draft, then creates a new version; ``skip_destroy`` leaves the old version in Bedrock
    (only dropped from the stack) for pods still pinned to it during a rollout.
    """

    guardrail_id: pulumi.Output[str]
    """The guardrail's id (``guardrailIdentifier`` for ``ApplyGuardrail``)."""
    guardrail_arn: pulumi.Output[str]
    """The guardrail's ARN, unversioned: what IAM grants (:func:`apply_guardrail_policy`)."""
    version: pulumi.Output[str]
    """The published version number, e.g. ``"3"`` (``guardrailVersion``), never ``DRAFT``."""

    def __init__(
        self, name: str, args: BundleGuardrailArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("weightshift:index:BundleGuardrail", name, None, opts)
        config = guardrail_config(args.safety)
        if config is None:
            raise GuardrailError(
                f"guardrail {args.guardrail_name}: safety.json moderates neither input nor "
                "output, so the bundle needs no guardrail; do not declare one"
            )
        if not 1 <= len(args.description) <= DESCRIPTION_MAX:
            raise GuardrailError(
                f"guardrail {args.guardrail_name}: description of {len(args.description)} "
                f"characters; Bedrock allows 1..{DESCRIPTION_MAX}"
            )
        guardrail = aws.bedrock.Guardrail(
            name,
            name=args.guardrail_name,
            description=args.description,
            kms_key_arn=args.kms_key_arn,
            opts=pulumi.ResourceOptions(parent=self),
            **config.resource_args(),
        )
        version = aws.bedrock.GuardrailVersion(
            name,
            guardrail_arn=guardrail.guardrail_arn,
            description=version_description(config.digest()),
            skip_destroy=True,
            # Replace-only in the provider already; said here so it cannot silently become
            # an in-place update that leaves the pods on a version of the old settings.
            opts=pulumi.ResourceOptions(parent=self, replace_on_changes=["description"]),
        )
        self.guardrail_id = guardrail.guardrail_id
        self.guardrail_arn = guardrail.guardrail_arn
        self.version = version.version
        self.register_outputs(
            {
                "guardrail_id": self.guardrail_id,
                "guardrail_arn": self.guardrail_arn,
                "version": self.version,
            }
        )


_VERSIONED = re.compile(r":guardrail/[^:/]+:")


def apply_guardrail_policy(guardrail_arn: str) -> dict[str, Any]:
    """The one IAM statement a pod needs to moderate with the bundle's guardrail.

    Finding: ``bedrock:ApplyGuardrail`` is authorized against the ``guardrail`` resource
    type, ``arn:${Partition}:bedrock:${Region}:${Account}:guardrail/${GuardrailId}``, which
    has no version part (Service Authorization Reference, "Actions, resources, and condition
    keys for Amazon Bedrock"). The Bedrock User Guide ("Set up permissions to use Amazon
    Bedrock Guardrails", section "Permissions for invoking guardrails to filter content")
    grants ``bedrock:ApplyGuardrail`` on ``arn:aws:bedrock:region:account-id:guardrail/
    guardrail-id``, and the API's ``GuardrailArn`` pattern (``...:guardrail/[a-z0-9]+``,
    botocore ``bedrock`` 2023-04-20) has no version either: the version is a separate URI
    parameter of ``ApplyGuardrail``. So the unversioned ARN is granted; it covers every
    version of this guardrail (IAM cannot narrow it to one). A versioned
    ``...:guardrail/ID:VERSION`` is not the documented resource and is refused here.
    """
    if _VERSIONED.search(guardrail_arn):
        raise ValueError(
            f"{guardrail_arn}: grant the unversioned guardrail ARN (...:guardrail/ID), the "
            "resource ApplyGuardrail is authorized against whatever version is applied"
        )
    return allow("ApplyBundleGuardrail", ["bedrock:ApplyGuardrail"], [guardrail_arn])
