"""The stack configuration: pydantic models of every ``weightshift:*`` key.

The Pulumi program, ``weightshift synth`` and ``weightshift plan`` all go through
:func:`load`, so an invalid config fails the same way everywhere and before any
resource is declared: each problem names the key, the bad value and what is
allowed.

Modules: ``fields`` (the base model, strict numbers and flags, shared validators),
``rollout`` (colours, rollout, thresholds, capacity, hold, rollback), ``network``
(network, traffic, artifacts), ``cluster`` (node groups, cluster, serving), ``stack``
(:class:`StackConfig` and its cross-section checks) and ``loading`` (:func:`load`,
:class:`ConfigError`, :class:`Problem`).

Imports: pydantic, ``weightshift.facts``, ``weightshift.stages`` and
``weightshift.bundles.versioning``; nothing of Pulumi, the components, preview, the CLI
or the gateway.
"""

from __future__ import annotations

from weightshift.config.cluster import (
    EKS_VERSIONS,
    GPU_AMI_TYPES,
    ClusterConfig,
    ExistingClusterConfig,
    NodeGroupConfig,
    ServingConfig,
)
from weightshift.config.fields import Flag, Float, Int, LogRetentionDays
from weightshift.config.loading import ConfigError, Problem, load
from weightshift.config.network import (
    MODERN_TLS_POLICIES,
    ArtifactsConfig,
    NetworkConfig,
    TrafficConfig,
)
from weightshift.config.rollout import (
    CapacityConfig,
    ColourConfig,
    Hold,
    RollbackConfig,
    RolloutConfig,
    Thresholds,
)
from weightshift.config.stack import CONFIG_KEYS, NAMESPACE, StackConfig

__all__ = [
    "CONFIG_KEYS",
    "EKS_VERSIONS",
    "GPU_AMI_TYPES",
    "MODERN_TLS_POLICIES",
    "NAMESPACE",
    "ArtifactsConfig",
    "CapacityConfig",
    "ClusterConfig",
    "ColourConfig",
    "ConfigError",
    "ExistingClusterConfig",
    "Flag",
    "Float",
    "Hold",
    "Int",
    "LogRetentionDays",
    "NetworkConfig",
    "NodeGroupConfig",
    "Problem",
    "RollbackConfig",
    "RolloutConfig",
    "ServingConfig",
    "StackConfig",
    "Thresholds",
    "TrafficConfig",
    "load",
]
