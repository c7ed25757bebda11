"""IAM documents the components share."""

from __future__ import annotations

import json
from collections.abc import Sequence


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
