"""IAM documents, and the Pod Identity role, the components share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_aws as aws


def service_trust(service: str, actions: Sequence[str] = ("sts:AssumeRole",)) -> str:
    """A role trust policy: only ``service`` may assume the role."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": service},
                    "Action": actions[0] if len(actions) == 1 else list(actions),
                }
            ],
        },
        sort_keys=True,
    )


POD_IDENTITY_TRUST = service_trust("pods.eks.amazonaws.com", ("sts:AssumeRole", "sts:TagSession"))
"""Trust policy of every role a pod gets through EKS Pod Identity."""


def allow(sid: str, actions: Sequence[str], resources: Sequence[str]) -> dict[str, Any]:
    """One Allow statement."""
    return {"Sid": sid, "Effect": "Allow", "Action": list(actions), "Resource": list(resources)}


def policy_document(statements: Sequence[dict[str, Any]]) -> str:
    """A policy document, keys sorted so the same policy always renders the same text."""
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)}, sort_keys=True)


def policy_size(document: str) -> int:
    """A policy's size as IAM counts it against its quotas: whitespace does not count."""
    return sum(1 for character in document if not character.isspace())


def pod_identity(
    role_name: str,
    association_name: str,
    *,
    cluster_name: pulumi.Input[str],
    namespace: str,
    service_account: str,
    policy: pulumi.Input[str],
    parent: pulumi.Resource,
) -> tuple[aws.iam.Role, aws.iam.RolePolicy, aws.eks.PodIdentityAssociation]:
    """A role with ``policy`` for pods of one service account (EKS Pod Identity): the role,
    its inline policy and the association."""
    child = pulumi.ResourceOptions(parent=parent)
    role = aws.iam.Role(role_name, assume_role_policy=POD_IDENTITY_TRUST, opts=child)
    inline = aws.iam.RolePolicy(role_name, role=role.id, policy=policy, opts=child)
    association = aws.eks.PodIdentityAssociation(
        association_name,
        cluster_name=cluster_name,
        namespace=namespace,
        service_account=service_account,
        role_arn=role.arn,
        # Pods that start once the association exists get a role that can already act.
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[inline]),
    )
    return role, inline, association
