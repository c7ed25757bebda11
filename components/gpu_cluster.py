"""The EKS cluster the inference stacks run on: GPU node groups and the controllers they need."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.iam import allow, pod_identity, policy_document, service_trust
from weightshift.config import ClusterConfig, NodeGroupConfig
from weightshift.facts import (
    AWS_LOAD_BALANCER_CONTROLLER,
    CLUSTER_AUTOSCALER,
    CLUSTER_AUTOSCALER_IMAGE_TAGS,
    NVIDIA_DEVICE_PLUGIN,
)

GPU_TAINT_KEY = "nvidia.com/gpu"
"""Every GPU node carries ``nvidia.com/gpu=true:NoSchedule``; only pods that tolerate it
(the inference pods, the device plugin) land there."""
GPU_TOLERATION = {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
SYSTEM_NAMESPACE = "kube-system"
LB_CONTROLLER_SERVICE_ACCOUNT = "aws-load-balancer-controller"
AUTOSCALER_SERVICE_ACCOUNT = "cluster-autoscaler"
POOL_LABEL = "weightshift.io/pool"
ACCELERATOR_LABEL = "k8s.amazonaws.com/accelerator"
SYSTEM_NODES = {POOL_LABEL: "system"}
"""Controllers run on the system node group, never on a GPU node."""


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


def required_node_affinity(labels: dict[str, str]) -> dict[str, Any]:
    """A node affinity that only nodes carrying every one of ``labels`` satisfy."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": key, "operator": "In", "values": [value]}
                            for key, value in sorted(labels.items())
                        ]
                    }
                ]
            }
        }
    }


@dataclass(frozen=True)
class GpuClusterArgs:
    settings: ClusterConfig
    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[Sequence[str]]
    """Private subnets: control-plane network interfaces, nodes and pods."""
    target_group_arns: pulumi.Input[Sequence[str]]
    """The target groups the load balancer controller may register pods in."""
    region: str
    partition: str
    account: pulumi.Input[str]
    cluster_name: str
    """The EKS cluster's name: unique per account and region (``__main__`` derives it from
    the model and the stack)."""
    deployer_paths: Sequence[pulumi.Resource] = ()
    """The network path from the deployer to the private API (routes, attachment)."""


class GpuCluster(pulumi.ComponentResource):
    """An EKS cluster (or an existing one) ready for GPU inference pods.

    Children when creating: ``{name}-secrets`` KMS key; ``{name}-control-plane`` LogGroup
    (``/aws/eks/<cluster>/cluster``, where EKS writes); ``{name}-role`` (cluster role) and
    ``{name}-nodes`` (node role) with their managed policy attachments; ``{name}`` EKS
    Cluster named ``args.cluster_name`` (private endpoint by default, secrets encrypted,
    every control-plane log) with ``{name}-api``, a security group of the control plane's own,
    and its ``{name}-deployer-*`` ingress rules admitting the deployer to the private API on
    443; per node group a LaunchTemplate (IMDSv2 required, hop limit 1,
    encrypted gp3 root volume) and a managed NodeGroup (on-demand; GPU groups tainted
    ``nvidia.com/gpu:NoSchedule`` and labelled ``weightshift.io/pool=gpu``); add-ons
    ``eks-pod-identity-agent`` and ``vpc-cni`` (network policy enforcement on; conflicts with
    the self-managed copies a new cluster starts with are overwritten); the Kubernetes
    provider; the NVIDIA device plugin Helm release (only for AL2023 NVIDIA AMIs: Bottlerocket
    ships it) on the GPU nodes; the AWS Load Balancer Controller and the Cluster Autoscaler
    Helm releases on the system nodes, each with its Pod Identity role (the autoscaler may
    scale only the GPU node groups). With ``existing``: only the Kubernetes provider.
    """

    cluster_name: pulumi.Output[str]
    security_group_id: pulumi.Output[str]
    """The cluster security group: nodes, and so pods, use it."""
    kubernetes: k8s.Provider
    gpu_node_labels: dict[str, str]
    ready: list[pulumi.Resource]
    """What must exist before an inference stack is declared (controllers, node groups)."""

    def __init__(
        self, name: str, args: GpuClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("weightshift:index:GpuCluster", name, None, opts)
        settings = args.settings
        self.gpu_node_labels = settings.gpu_node_labels
        self.ready = []
        if settings.existing is not None:
            existing = settings.existing
            self.cluster_name = pulumi.Output.from_input(existing.name)
            self.security_group_id = pulumi.Output.from_input(existing.security_group_id)
            self.kubernetes = self._kubernetes_provider(
                name, existing.name, existing.endpoint, existing.certificate_authority, args
            )
        else:
            self._create(name, args)
        self.register_outputs(
            {"cluster_name": self.cluster_name, "security_group_id": self.security_group_id}
        )

    def _kubernetes_provider(
        self,
        name: str,
        cluster: pulumi.Input[str],
        endpoint: pulumi.Input[str],
        certificate_authority: pulumi.Input[str],
        args: GpuClusterArgs,
        *,
        depends_on: Sequence[pulumi.Resource] = (),
    ) -> k8s.Provider:
        kubeconfig = pulumi.Output.all(cluster, endpoint, certificate_authority).apply(
            lambda values: kubeconfig_for(values[0], values[1], values[2], args.region)
        )
        return k8s.Provider(
            f"{name}-k8s",
            kubeconfig=kubeconfig,
            enable_server_side_apply=True,
            delete_unreachable=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(depends_on)),
        )

    def _create(self, name: str, args: GpuClusterArgs) -> None:
        settings = args.settings
        child = pulumi.ResourceOptions(parent=self)
        policy = f"arn:{args.partition}:iam::aws:policy"
        key = aws.kms.Key(
            f"{name}-secrets",
            description=f"EKS secrets of {args.cluster_name}",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            opts=child,
        )
        logs = aws.cloudwatch.LogGroup(
            f"{name}-control-plane",
            # EKS writes control-plane logs here; the name must follow the cluster's.
            name=f"/aws/eks/{args.cluster_name}/cluster",
            retention_in_days=settings.log_retention_days,
            opts=child,
        )
        cluster_role = aws.iam.Role(
            f"{name}-role", assume_role_policy=service_trust("eks.amazonaws.com"), opts=child
        )
        attached = [
            aws.iam.RolePolicyAttachment(
                f"{name}-role-cluster",
                role=cluster_role.name,
                policy_arn=f"{policy}/AmazonEKSClusterPolicy",
                opts=child,
            )
        ]
        # The deployer reaches the API through a group of the control plane's own: on the
        # cluster security group, which nodes and pods share too, the rule would open every
        # pod listening on 443 to the deployer's network.
        api = aws.ec2.SecurityGroup(
            f"{name}-api",
            vpc_id=args.vpc_id,
            description=f"{args.cluster_name} Kubernetes API: the deployer on 443",
            opts=child,
        )
        cluster = aws.eks.Cluster(
            name,
            name=args.cluster_name,
            version=settings.version,
            role_arn=cluster_role.arn,
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=args.subnet_ids,
                security_group_ids=[api.id],
                endpoint_private_access=True,
                endpoint_public_access=settings.endpoint_public_access,
                public_access_cidrs=list(settings.public_access_cidrs) or None,
            ),
            encryption_config=aws.eks.ClusterEncryptionConfigArgs(
                provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=key.arn),
                resources=["secrets"],
            ),
            enabled_cluster_log_types=CONTROL_PLANE_LOGS,
            access_config=aws.eks.ClusterAccessConfigArgs(
                authentication_mode="API", bootstrap_cluster_creator_admin_permissions=True
            ),
            deletion_protection=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[logs, *attached]),
        )
        self.cluster_name = cluster.name
        self.security_group_id = cluster.vpc_config.apply(
            lambda vpc: str(vpc.cluster_security_group_id)
        )
        deployer = self._deployer_access(name, settings, api)
        node_role = aws.iam.Role(
            f"{name}-nodes", assume_role_policy=service_trust("ec2.amazonaws.com"), opts=child
        )
        node_policies = [
            aws.iam.RolePolicyAttachment(
                f"{name}-nodes-{suffix}",
                role=node_role.name,
                policy_arn=f"{policy}/{managed}",
                opts=child,
            )
            for suffix, managed in (
                ("worker", "AmazonEKSWorkerNodePolicy"),
                ("cni", "AmazonEKS_CNI_Policy"),
                ("ecr", "AmazonEC2ContainerRegistryReadOnly"),
            )
        ]
        system = self._node_group(
            name,
            cluster,
            node_role,
            node_policies,
            group=settings.system_nodes,
            args=args,
            gpu=False,
        )
        gpu_groups = [
            self._node_group(
                name, cluster, node_role, node_policies, group=group, args=args, gpu=True
            )
            for group in settings.gpu_node_groups
        ]
        groups = [system, *gpu_groups]
        addons = [
            aws.eks.Addon(
                f"{name}-pod-identity-agent",
                cluster_name=cluster.name,
                addon_name="eks-pod-identity-agent",
                resolve_conflicts_on_create="OVERWRITE",
                resolve_conflicts_on_update="OVERWRITE",
                opts=pulumi.ResourceOptions(parent=self, depends_on=groups),
            ),
            aws.eks.Addon(
                f"{name}-vpc-cni",
                cluster_name=cluster.name,
                addon_name="vpc-cni",
                configuration_values=json.dumps({"enableNetworkPolicy": "true"}),
                # A new cluster already runs a self-managed aws-node; with the default (NONE)
                # creating the add-on fails on the first differing field.
                resolve_conflicts_on_create="OVERWRITE",
                resolve_conflicts_on_update="OVERWRITE",
                opts=child,
            ),
        ]
        self.kubernetes = self._kubernetes_provider(
            name,
            cluster.name,
            cluster.endpoint,
            cluster.certificate_authority.apply(lambda ca: str(ca.data)),
            args,
            # Every Kubernetes call of the deploy goes through the private endpoint.
            depends_on=[*deployer, *args.deployer_paths],
        )
        helm = pulumi.ResourceOptions(parent=self, provider=self.kubernetes, depends_on=addons)
        releases: list[pulumi.Resource] = []
        if any(group.ami_type.startswith("AL2023") for group in settings.gpu_node_groups):
            releases.append(
                k8s.helm.v3.Release(
                    f"{name}-nvidia-device-plugin",
                    name="nvidia-device-plugin",
                    chart=NVIDIA_DEVICE_PLUGIN.chart,
                    version=settings.device_plugin_chart_version,
                    repository_opts=k8s.helm.v3.RepositoryOptsArgs(
                        repo=NVIDIA_DEVICE_PLUGIN.repository
                    ),
                    namespace=SYSTEM_NAMESPACE,
                    values=device_plugin_values(self.gpu_node_labels),
                    atomic=True,
                    opts=helm,
                )
            )
        releases.append(self._load_balancer_controller(name, cluster, args, helm))
        releases.append(self._autoscaler(name, cluster, gpu_groups, args, helm))
        self.ready = [*groups, *addons, *releases]

    def _deployer_access(
        self, name: str, settings: ClusterConfig, api: aws.ec2.SecurityGroup
    ) -> list[aws.vpc.SecurityGroupIngressRule]:
        """The control plane's interfaces accept only the cluster security group and ``api``:
        admit the machines that run ``pulumi up`` on 443 there, or the Kubernetes half of
        the deploy is refused."""
        child = pulumi.ResourceOptions(parent=self)
        sources: list[tuple[str, str | None, str | None]] = [
            (f"{name}-deployer-{index}", cidr, None)
            for index, cidr in enumerate(settings.deployer_cidrs)
        ] + [
            (f"{name}-deployer-sg-{index}", None, group)
            for index, group in enumerate(settings.deployer_security_group_ids)
        ]
        return [
            aws.vpc.SecurityGroupIngressRule(
                rule,
                security_group_id=api.id,
                cidr_ipv4=cidr,
                referenced_security_group_id=group,
                ip_protocol="tcp",
                from_port=443,
                to_port=443,
                description="deployer to the Kubernetes API",
                opts=child,
            )
            for rule, cidr, group in sources
        ]

    def _node_group(
        self,
        name: str,
        cluster: aws.eks.Cluster,
        role: aws.iam.Role,
        policies: list[aws.iam.RolePolicyAttachment],
        *,
        group: NodeGroupConfig,
        args: GpuClusterArgs,
        gpu: bool,
    ) -> aws.eks.NodeGroup:
        child = pulumi.ResourceOptions(parent=self)
        # Bottlerocket keeps images and pod volumes (the pulled bundle) on its second disk.
        device = "/dev/xvdb" if group.ami_type.startswith("BOTTLEROCKET") else "/dev/xvda"
        template = aws.ec2.LaunchTemplate(
            f"{name}-{group.name}",
            description=f"{name} {group.name} nodes: IMDSv2 only, encrypted volume",
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                # 1: containers cannot reach the instance's credentials; pods use Pod Identity.
                http_put_response_hop_limit=1,
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name=device,
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=group.disk_gib,
                        volume_type="gp3",
                        encrypted="true",
                        delete_on_termination="true",
                    ),
                )
            ],
            update_default_version=True,
            opts=child,
        )
        labels = {**group.labels, POOL_LABEL: "gpu" if gpu else "system"}
        if gpu:
            # The Cluster Autoscaler treats a node with this label as a GPU node that is not
            # ready until the device plugin advertises its GPUs; without it, it sees a ready
            # node with no GPU and scales out again (its AWS README, "GPU instances").
            labels.setdefault(ACCELERATOR_LABEL, f"nvidia-{group.instance_types[0].split('.')[0]}")
        return aws.eks.NodeGroup(
            f"{name}-{group.name}",
            cluster_name=cluster.name,
            node_group_name_prefix=f"{group.name}-",
            node_role_arn=role.arn,
            subnet_ids=args.subnet_ids,
            instance_types=list(group.instance_types),
            ami_type=group.ami_type,
            capacity_type="ON_DEMAND",
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=group.min_size,
                desired_size=group.desired_size,
                max_size=group.max_size,
            ),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(str)
            ),
            labels=labels,
            taints=[
                aws.eks.NodeGroupTaintArgs(key=GPU_TAINT_KEY, value="true", effect="NO_SCHEDULE")
            ]
            if gpu
            else None,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=policies,
                # The autoscaler moves desiredSize; a deploy must not undo it.
                ignore_changes=["scalingConfig.desiredSize"],
            ),
        )

    def _pod_identity(
        self,
        name: str,
        cluster: aws.eks.Cluster,
        service_account: str,
        policy: pulumi.Input[str],
    ) -> aws.eks.PodIdentityAssociation:
        """A role for one controller's service account in kube-system, with ``policy``."""
        _, _, association = pod_identity(
            name,
            name,
            cluster_name=cluster.name,
            namespace=SYSTEM_NAMESPACE,
            service_account=service_account,
            policy=policy,
            parent=self,
        )
        return association

    def _load_balancer_controller(
        self,
        name: str,
        cluster: aws.eks.Cluster,
        args: GpuClusterArgs,
        helm: pulumi.ResourceOptions,
    ) -> k8s.helm.v3.Release:
        association = self._pod_identity(
            f"{name}-lb-controller",
            cluster,
            LB_CONTROLLER_SERVICE_ACCOUNT,
            pulumi.Output.from_input(args.target_group_arns).apply(load_balancer_controller_policy),
        )
        return k8s.helm.v3.Release(
            f"{name}-lb-controller",
            name="aws-load-balancer-controller",
            chart=AWS_LOAD_BALANCER_CONTROLLER.chart,
            version=args.settings.load_balancer_controller_chart_version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(
                repo=AWS_LOAD_BALANCER_CONTROLLER.repository
            ),
            namespace=SYSTEM_NAMESPACE,
            values={
                "clusterName": cluster.name,
                "region": args.region,
                "vpcId": args.vpc_id,
                "replicaCount": 2,
                "serviceAccount": {"create": True, "name": LB_CONTROLLER_SERVICE_ACCOUNT},
                # TargetGroupBinding only: no Ingress class, no Service controller or webhook,
                # no Shield/WAF lookups, no backend security group (its IAM role allows none
                # of what those need).
                "createIngressClassResource": False,
                "ingressClassParams": {"create": False},
                "enableServiceMutatorWebhook": False,
                "enableShield": False,
                "enableWaf": False,
                "enableWafv2": False,
                "enableBackendSecurityGroup": False,
                "controllerConfig": {"featureGates": {"EnableServiceController": False}},
                "nodeSelector": SYSTEM_NODES,
            },
            atomic=True,
            opts=pulumi.ResourceOptions.merge(
                helm, pulumi.ResourceOptions(depends_on=[association])
            ),
        )

    def _autoscaler(
        self,
        name: str,
        cluster: aws.eks.Cluster,
        gpu_groups: list[aws.eks.NodeGroup],
        args: GpuClusterArgs,
        helm: pulumi.ResourceOptions,
    ) -> k8s.helm.v3.Release:
        """The Kubernetes Cluster Autoscaler, given exactly the GPU node groups' Auto Scaling
        groups (``--nodes=MIN:MAX:NAME``): pending inference pods grow them, empty GPU nodes
        are released. The system group keeps its configured size."""
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
            f"{name}-autoscaler", cluster, AUTOSCALER_SERVICE_ACCOUNT, policy
        )
        groups = asg_names.apply(
            lambda names: [
                {"name": asg, "minSize": config.min_size, "maxSize": config.max_size}
                for asg, config in zip(names, configs, strict=True)
            ]
        )
        return k8s.helm.v3.Release(
            f"{name}-autoscaler",
            name="cluster-autoscaler",
            chart=CLUSTER_AUTOSCALER.chart,
            version=args.settings.autoscaler_chart_version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=CLUSTER_AUTOSCALER.repository),
            namespace=SYSTEM_NAMESPACE,
            values={
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
                    # A node whose pods use local storage (the pulled bundle) is never
                    # drained to save money: an inference pod is not evicted mid-rollout.
                    "skip-nodes-with-local-storage": True,
                },
            },
            atomic=True,
            opts=pulumi.ResourceOptions.merge(
                helm, pulumi.ResourceOptions(depends_on=[association, *gpu_groups])
            ),
        )


def _autoscaling_group(resources: Sequence[Any]) -> str:
    """The Auto Scaling group EKS made for a managed node group (its ``resources`` output)."""
    return str(resources[0].autoscaling_groups[0].name)


def kubeconfig_for(cluster: str, endpoint: str, certificate_authority: str, region: str) -> str:
    """A kubeconfig that authenticates with ``aws eks get-token`` (the deployer's credentials)."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": cluster,
                    "cluster": {
                        "server": endpoint,
                        "certificate-authority-data": certificate_authority,
                    },
                }
            ],
            "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": cluster}}],
            "current-context": cluster,
            "users": [
                {
                    "name": cluster,
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "aws",
                            "args": [
                                "eks",
                                "get-token",
                                "--cluster-name",
                                cluster,
                                "--region",
                                region,
                                "--output",
                                "json",
                            ],
                        }
                    },
                }
            ],
        },
        sort_keys=True,
    )
