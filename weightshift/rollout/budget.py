"""How long rolling one colour's pods may take, so ``pulumi up`` waits long enough.

pulumi-kubernetes gives up on a Deployment after 10 minutes unless told otherwise
(``facts.PULUMI_KUBERNETES_DEFAULT_AWAIT_SECONDS``). A GPU inference pod needs a node, its
image, the bundle pulled from S3 and the weights loaded before it is ready, and a rolling
update replaces pods ``maxSurge`` at a time (``maxUnavailable`` is 0: capacity never drops),
so a real model cannot be rolled in 10 minutes. The budget below is the worst case of each
step; the Deployment's ``customTimeouts`` and ``progressDeadlineSeconds`` come from it, and
``weightshift plan`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass

NODE_START_SECONDS = 600
"""A new GPU node: EC2 launch, join, NVIDIA driver and device plugin ready (assumption: EKS
GPU nodes typically join in 3-6 minutes; the Cluster Autoscaler adds its scan interval)."""
IMAGE_PULL_SECONDS = 300
"""The server image on a fresh node (assumption: the vLLM image is about 10 GB)."""
BUNDLE_PULL_BYTES_PER_SECOND = 100 * 2**20
"""The init container's pull from S3 (assumption, conservative: one pod, parallel ranged
reads; S3 serves far more per prefix)."""
READY_SECONDS = 60
"""Readiness probe plus the ALB's health check (2 checks 10 s apart) and readiness gate."""


@dataclass(frozen=True)
class RolloutBudget:
    """The time one rolling update of a colour may take, step by step."""

    replicas: int
    max_surge: int
    startup_seconds: int
    bundle_pull_seconds: int

    @property
    def per_pod_seconds(self) -> int:
        """One new pod, from scheduling to ready: also the Deployment's progress deadline,
        which Kubernetes counts afresh each time a pod becomes ready."""
        return (
            NODE_START_SECONDS
            + IMAGE_PULL_SECONDS
            + self.bundle_pull_seconds
            + self.startup_seconds
            + READY_SECONDS
        )

    @property
    def waves(self) -> int:
        """Pods replaced ``max_surge`` at a time; at least one wave (a create, a restart)."""
        return max(1, -(-self.replicas // self.max_surge))

    @property
    def seconds(self) -> int:
        return self.waves * self.per_pod_seconds

    def describe(self) -> str:
        minutes = round(self.per_pod_seconds / 60)
        return (
            f"up to {_hours(self.seconds)} ({self.waves} wave(s) of {self.max_surge} pod(s), "
            f"{minutes} min each: node {NODE_START_SECONDS // 60} min, image "
            f"{IMAGE_PULL_SECONDS // 60} min, bundle {round(self.bundle_pull_seconds / 60)} min, "
            f"load {round(self.startup_seconds / 60)} min, ready {READY_SECONDS // 60} min)"
        )


def rollout_budget(
    *, replicas: int, max_surge: int, startup_seconds: int, bundle_bytes: int
) -> RolloutBudget:
    if max_surge < 1:
        raise ValueError("max_surge must be at least 1 (maxUnavailable is 0)")
    return RolloutBudget(
        replicas=replicas,
        max_surge=max_surge,
        startup_seconds=startup_seconds,
        bundle_pull_seconds=-(-bundle_bytes // BUNDLE_PULL_BYTES_PER_SECOND),
    )


def _hours(seconds: int) -> str:
    minutes = -(-seconds // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"
