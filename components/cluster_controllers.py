"""The controllers ``GpuCluster`` (``components/gpu_cluster.py``) installs in kube-system
with Helm: the NVIDIA device plugin, the AWS Load Balancer Controller and the Cluster
Autoscaler, each controller with a Pod Identity role of exactly what it does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.gpu_nodes import (
    GPU_TOLERATION,
    SYSTEM_NODES,
    GpuClusterArgs,
    required_node_affinity,
)
from components.iam import allow, pod_identity, policy_document
from weightshift.facts import (
    AWS_LOAD_BALANCER_CONTROLLER,
    CLUSTER_AUTOSCALER,
    CLUSTER_AUTOSCALER_IMAGE_TAGS,
    NVIDIA_DEVICE_PLUGIN,
)

SYSTEM_NAMESPACE = "kube-system"
LB_CONTROLLER_SERVICE_ACCOUNT = "aws-load-balancer-controller"
AUTOSCALER_SERVICE_ACCOUNT = "cluster-autoscaler"


def load_balancer_controller_policy(target_group_arns: Sequence[str]) -> str:
    """What the controller needs to keep pod IPs registered in our target groups, no more.

    The controller is used only for ``TargetGroupBinding`` (no Ingress, no Service load
    balancers, no security-group management: the program owns those rules), so it may
    describe, and register and deregister targets in these target groups only.
    """
    return policy_document(
        [
            # Describe calls support no resource-level permissions.
            allow(
                "Describe",
                [
                    "ec2:DescribeAvailabilityZones",
                    "ec2:DescribeInstances",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DescribeSecurityGroups",
                    "ec2:DescribeSubnets",
                    "ec2:DescribeVpcs",
                    "elasticloadbalancing:DescribeListeners",
                    "elasticloadbalancing:DescribeLoadBalancers",
                    "elasticloadbalancing:DescribeTags",
                    "elasticloadbalancing:DescribeTargetGroupAttributes",
                    "elasticloadbalancing:DescribeTargetGroups",
                    "elasticloadbalancing:DescribeTargetHealth",
                ],
                ["*"],
            ),
            allow(
                "RegisterPodsInOurTargetGroups",
                ["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"],
                sorted(target_group_arns),
            ),
        ]
    )


def autoscaler_policy(
    *,
    asg_names: Sequence[str],
    node_group_arns: Sequence[str],
    region: str,
    account: str,
    partition: str,
) -> str:
    """What the Cluster Autoscaler needs to grow and shrink the GPU node groups, and only them.

    Describe calls support no resource-level permissions; scaling is limited to the GPU
    groups' Auto Scaling groups by ARN (the autoscaler is given exactly these groups with
    ``--nodes``, so it never tries another), and it may read those node groups' labels and
    taints (``eks:DescribeNodegroup``) to scale a group up from zero.
    """
    asgs = [
        f"arn:{partition}:autoscaling:{region}:{account}:autoScalingGroup:*:"
        f"autoScalingGroupName/{asg}"
        for asg in sorted(asg_names)
    ]
    return policy_document(
        [
            allow(
                "Describe",
                [
                    "autoscaling:DescribeAutoScalingGroups",
                    "autoscaling:DescribeAutoScalingInstances",
                    "autoscaling:DescribeLaunchConfigurations",
                    "autoscaling:DescribeScalingActivities",
                    "ec2:DescribeImages",
                    "ec2:DescribeInstanceTypes",
                    "ec2:DescribeLaunchTemplateVersions",
                    "ec2:GetInstanceTypesFromInstanceRequirements",
                ],
                ["*"],
            ),
            allow("GpuNodeGroupTemplates", ["eks:DescribeNodegroup"], sorted(node_group_arns)),
            allow(
                "ScaleGpuGroupsOnly",
                [
                    "autoscaling:SetDesiredCapacity",
                    "autoscaling:TerminateInstanceInAutoScalingGroup",
                ],
                asgs,
            ),
        ]
    )


def device_plugin_values(gpu_node_labels: dict[str, str]) -> dict[str, Any]:
    """The NVIDIA device plugin's values: on every GPU node, nowhere else.

    The chart's default affinity requires labels node-feature-discovery sets
    (``facts.NVIDIA_DEVICE_PLUGIN``); EKS GPU nodes carry none, so it is replaced (Helm
    replaces lists) by our GPU label, and the DaemonSet tolerates the GPU taint.
    """
    return {
        "nodeSelector": gpu_node_labels,
        "affinity": required_node_affinity(gpu_node_labels),
        "tolerations": [GPU_TOLERATION],
    }


def _autoscaling_group(resources: Sequence[Any]) -> str:
    """The Auto Scaling group EKS made for a managed node group (its ``resources`` output)."""
    return str(resources[0].autoscaling_groups[0].name)


def load_balancer_controller_values(
    cluster_name: pulumi.Input[str], args: GpuClusterArgs
) -> dict[str, Any]:
    """The controller's values: TargetGroupBinding only, on the system nodes."""
    return {
        "clusterName": cluster_name,
        "region": args.region,
        "vpcId": args.vpc_id,
        "replicaCount": 2,
        "serviceAccount": {"create": True, "name": LB_CONTROLLER_SERVICE_ACCOUNT},
        # TargetGroupBinding only: no Ingress class, no Service controller or webhook, no
        # Shield/WAF lookups, no backend security group (its IAM role allows none of what
        # those need).
        "createIngressClassResource": False,
        "ingressClassParams": {"create": False},
        "enableServiceMutatorWebhook": False,
        "enableShield": False,
        "enableWaf": False,
        "enableWafv2": False,
        "enableBackendSecurityGroup": False,
        "controllerConfig": {"featureGates": {"EnableServiceController": False}},
        # The readiness gate is injected only when a pod is created; with the chart's
        # default (Ignore, since controller v2.11) a pod created while the controller is down
        # gets no gate and counts as ready before its target is healthy. The webhook only
        # sees namespaces labelled for injection: ours.
        "podMutatorWebhookConfig": {"failurePolicy": "Fail"},
        "nodeSelector": SYSTEM_NODES,
    }


def autoscaler_values(
    groups: pulumi.Input[list[dict[str, Any]]], args: GpuClusterArgs
) -> dict[str, Any]:
    """The Cluster Autoscaler's values: exactly ``groups`` (name, minSize, maxSize)."""
    return {
        "cloudProvider": "aws",
        "awsRegion": args.region,
        "autoscalingGroups": groups,
        # The autoscaler's minor version must match the cluster's.
        "image": {"tag": CLUSTER_AUTOSCALER_IMAGE_TAGS[args.settings.version]},
        "rbac": {"serviceAccount": {"create": True, "name": AUTOSCALER_SERVICE_ACCOUNT}},
        "nodeSelector": SYSTEM_NODES,
        "extraArgs": {
            # Of the groups that fit a pending pod, grow the one that wastes least.
            "expander": "least-waste",
            "balance-similar-node-groups": True,
            # A node whose pods use local storage (the pulled bundle) is never drained to
            # save money: an inference pod is not evicted mid-rollout.
            "skip-nodes-with-local-storage": True,
        },
    }


class ClusterControllers:
    """Declares the controllers as children of ``parent`` (the ``GpuCluster``):
    ``{name}-nvidia-device-plugin`` Helm release; ``{name}-lb-controller`` and
    ``{name}-autoscaler`` Pod Identity roles, policies and associations, and Helm releases.
    """

    def __init__(
        self,
        name: str,
        cluster: aws.eks.Cluster,
        args: GpuClusterArgs,
        *,
        parent: pulumi.Resource,
        helm: pulumi.ResourceOptions,
    ) -> None:
        self.name = name
        self.cluster = cluster
        self.args = args
        self.parent = parent
        self.helm = helm

    def device_plugin(self, gpu_node_labels: dict[str, str]) -> k8s.helm.v3.Release:
        """The NVIDIA device plugin, on the GPU nodes (AL2023 NVIDIA AMIs: Bottlerocket
        ships it)."""
        return k8s.helm.v3.Release(
            f"{self.name}-nvidia-device-plugin",
            name="nvidia-device-plugin",
            chart=NVIDIA_DEVICE_PLUGIN.chart,
            version=self.args.settings.device_plugin_chart_version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=NVIDIA_DEVICE_PLUGIN.repository),
            namespace=SYSTEM_NAMESPACE,
            values=device_plugin_values(gpu_node_labels),
            atomic=True,
            opts=self.helm,
        )

    def load_balancer_controller(self) -> k8s.helm.v3.Release:
        args = self.args
        association = self._pod_identity(
            f"{self.name}-lb-controller",
            LB_CONTROLLER_SERVICE_ACCOUNT,
            pulumi.Output.from_input(args.target_group_arns).apply(load_balancer_controller_policy),
        )
        return k8s.helm.v3.Release(
            f"{self.name}-lb-controller",
            name="aws-load-balancer-controller",
            chart=AWS_LOAD_BALANCER_CONTROLLER.chart,
            version=args.settings.load_balancer_controller_chart_version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(
                repo=AWS_LOAD_BALANCER_CONTROLLER.repository
            ),
            namespace=SYSTEM_NAMESPACE,
            values=load_balancer_controller_values(self.cluster.name, args),
            atomic=True,
            opts=pulumi.ResourceOptions.merge(
                self.helm, pulumi.ResourceOptions(depends_on=[association])
            ),
        )

    def autoscaler(self, gpu_groups: list[aws.eks.NodeGroup]) -> k8s.helm.v3.Release:
        """The Kubernetes Cluster Autoscaler, given exactly the GPU node groups' Auto Scaling
        groups (``--nodes=MIN:MAX:NAME``): pending inference pods grow them, empty GPU nodes
        are released. The system group keeps its configured size."""
        args = self.args
        configs = args.settings.gpu_node_groups
        asg_names = pulumi.Output.all(
            *[group.resources.apply(_autoscaling_group) for group in gpu_groups]
        )
        policy = pulumi.Output.all(
            asg_names, pulumi.Output.all(*[group.arn for group in gpu_groups]), args.account
        ).apply(
            lambda values: autoscaler_policy(
                asg_names=values[0],
                node_group_arns=values[1],
                region=args.region,
                account=values[2],
                partition=args.partition,
            )
        )
        association = self._pod_identity(
            f"{self.name}-autoscaler", AUTOSCALER_SERVICE_ACCOUNT, policy
        )
        groups = asg_names.apply(
            lambda names: [
                {"name": asg, "minSize": config.min_size, "maxSize": config.max_size}
                for asg, config in zip(names, configs, strict=True)
            ]
        )
        return k8s.helm.v3.Release(
            f"{self.name}-autoscaler",
            name="cluster-autoscaler",
            chart=CLUSTER_AUTOSCALER.chart,
            version=args.settings.autoscaler_chart_version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=CLUSTER_AUTOSCALER.repository),
            namespace=SYSTEM_NAMESPACE,
            values=autoscaler_values(groups, args),
            atomic=True,
            opts=pulumi.ResourceOptions.merge(
                self.helm, pulumi.ResourceOptions(depends_on=[association, *gpu_groups])
            ),
        )

    def _pod_identity(
        self, name: str, service_account: str, policy: pulumi.Input[str]
    ) -> aws.eks.PodIdentityAssociation:
        """A role for one controller's service account in kube-system, with ``policy``."""
        _, _, association = pod_identity(
            name,
            name,
            cluster_name=self.cluster.name,
            namespace=SYSTEM_NAMESPACE,
            service_account=service_account,
            policy=policy,
            parent=self.parent,
        )
        return association
