"""The EKS cluster the inference stacks run on: GPU node groups and the controllers they need."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.cluster_controllers import (
    AUTOSCALER_SERVICE_ACCOUNT,
    LB_CONTROLLER_SERVICE_ACCOUNT,
    SYSTEM_NAMESPACE,
    ClusterControllers,
    autoscaler_policy,
    device_plugin_values,
    load_balancer_controller_policy,
)
from components.gpu_nodes import (
    ACCELERATOR_LABEL,
    GPU_TAINT_KEY,
    GPU_TOLERATION,
    POOL_LABEL,
    SYSTEM_NODES,
    GpuClusterArgs,
    required_node_affinity,
)
from components.iam import service_trust
from weightshift.config import ClusterConfig, NodeGroupConfig

__all__ = [
    "ACCELERATOR_LABEL",
    "AUTOSCALER_SERVICE_ACCOUNT",
    "CONTROL_PLANE_LOGS",
    "GPU_TAINT_KEY",
    "GPU_TOLERATION",
    "LB_CONTROLLER_SERVICE_ACCOUNT",
    "POOL_LABEL",
    "SYSTEM_NAMESPACE",
    "SYSTEM_NODES",
    "GpuCluster",
    "GpuClusterArgs",
    "autoscaler_policy",
    "device_plugin_values",
    "kubeconfig_for",
    "load_balancer_controller_policy",
    "required_node_affinity",
]

CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]


def node_labels(group: NodeGroupConfig, *, gpu: bool) -> dict[str, str]:
    """A node group's labels: its own, its pool, and for GPU nodes the accelerator."""
    labels = {**group.labels, POOL_LABEL: "gpu" if gpu else "system"}
    if gpu:
        # The Cluster Autoscaler treats a node with this label as a GPU node that is not
        # ready until the device plugin advertises its GPUs; without it, it sees a ready
        # node with no GPU and scales out again (its AWS README, "GPU instances").
        labels.setdefault(ACCELERATOR_LABEL, f"nvidia-{group.instance_types[0].split('.')[0]}")
    return labels


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
    provider; and the controllers (``ClusterControllers``, ``components/cluster_controllers.py``):
    the NVIDIA device plugin Helm release (only for AL2023 NVIDIA AMIs: Bottlerocket ships it)
    on the GPU nodes, the AWS Load Balancer Controller and the Cluster Autoscaler Helm
    releases on the system nodes, each with its Pod Identity role (the autoscaler may
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
        cluster, api = self._control_plane(name, args)
        self.cluster_name = cluster.name
        self.security_group_id = cluster.vpc_config.apply(
            lambda vpc: str(vpc.cluster_security_group_id)
        )
        deployer = self._deployer_access(name, settings, api)
        node_role, node_policies = self._node_role(name, args)
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
        addons = self._addons(name, cluster, groups)
        self.kubernetes = self._kubernetes_provider(
            name,
            cluster.name,
            cluster.endpoint,
            cluster.certificate_authority.apply(lambda ca: str(ca.data)),
            args,
            # Every Kubernetes call of the deploy goes through the private endpoint.
            depends_on=[*deployer, *args.deployer_paths],
        )
        controllers = ClusterControllers(
            name,
            cluster,
            args,
            parent=self,
            helm=pulumi.ResourceOptions(parent=self, provider=self.kubernetes, depends_on=addons),
        )
        releases: list[pulumi.Resource] = []
        if any(group.ami_type.startswith("AL2023") for group in settings.gpu_node_groups):
            releases.append(controllers.device_plugin(self.gpu_node_labels))
        releases.append(controllers.load_balancer_controller())
        releases.append(controllers.autoscaler(gpu_groups))
        self.ready = [*groups, *addons, *releases]

    def _control_plane(
        self, name: str, args: GpuClusterArgs
    ) -> tuple[aws.eks.Cluster, aws.ec2.SecurityGroup]:
        """The cluster (private endpoint by default, secrets encrypted, every control-plane
        log) and the security group of its API."""
        settings = args.settings
        child = pulumi.ResourceOptions(parent=self)
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
                policy_arn=f"arn:{args.partition}:iam::aws:policy/AmazonEKSClusterPolicy",
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
            vpc_config=cluster_vpc_config(args, api),
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
        return cluster, api

    def _deployer_access(
        self, name: str, settings: ClusterConfig, api: aws.ec2.SecurityGroup
    ) -> list[aws.vpc.SecurityGroupIngressRule]:
        """The control plane's interfaces accept only the cluster security group and ``api``:
        admit the machines that run ``pulumi up`` on 443 there, or the Kubernetes half of
        the deploy is refused."""
        child = pulumi.ResourceOptions(parent=self)
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
            for rule, cidr, group in deployer_sources(name, settings)
        ]

    def _node_role(
        self, name: str, args: GpuClusterArgs
    ) -> tuple[aws.iam.Role, list[aws.iam.RolePolicyAttachment]]:
        """The nodes' role, with the managed policies a worker node needs."""
        child = pulumi.ResourceOptions(parent=self)
        node_role = aws.iam.Role(
            f"{name}-nodes", assume_role_policy=service_trust("ec2.amazonaws.com"), opts=child
        )
        return node_role, [
            aws.iam.RolePolicyAttachment(
                f"{name}-nodes-{suffix}",
                role=node_role.name,
                policy_arn=f"arn:{args.partition}:iam::aws:policy/{managed}",
                opts=child,
            )
            for suffix, managed in (
                ("worker", "AmazonEKSWorkerNodePolicy"),
                ("cni", "AmazonEKS_CNI_Policy"),
                ("ecr", "AmazonEC2ContainerRegistryReadOnly"),
            )
        ]

    def _addons(
        self, name: str, cluster: aws.eks.Cluster, groups: list[aws.eks.NodeGroup]
    ) -> list[aws.eks.Addon]:
        """Pod Identity (once the nodes run) and the VPC CNI with network policies on."""
        return [
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
                opts=pulumi.ResourceOptions(parent=self),
            ),
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
        template = self._launch_template(name, group)
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
            labels=node_labels(group, gpu=gpu),
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

    def _launch_template(self, name: str, group: NodeGroupConfig) -> aws.ec2.LaunchTemplate:
        """IMDSv2 only (hop limit 1), an encrypted gp3 volume."""
        return aws.ec2.LaunchTemplate(
            f"{name}-{group.name}",
            description=f"{name} {group.name} nodes: IMDSv2 only, encrypted volume",
            metadata_options=imds_v2_only(),
            block_device_mappings=[node_volume(group)],
            update_default_version=True,
            opts=pulumi.ResourceOptions(parent=self),
        )


def deployer_sources(
    name: str, settings: ClusterConfig
) -> list[tuple[str, str | None, str | None]]:
    """The deployer's ingress rules to the API: (rule name, CIDR, security group)."""
    return [
        (f"{name}-deployer-{index}", cidr, None)
        for index, cidr in enumerate(settings.deployer_cidrs)
    ] + [
        (f"{name}-deployer-sg-{index}", None, group)
        for index, group in enumerate(settings.deployer_security_group_ids)
    ]


def cluster_vpc_config(
    args: GpuClusterArgs, api: aws.ec2.SecurityGroup
) -> aws.eks.ClusterVpcConfigArgs:
    """The control plane's interfaces in the private subnets, its API private by default."""
    settings = args.settings
    return aws.eks.ClusterVpcConfigArgs(
        subnet_ids=args.subnet_ids,
        security_group_ids=[api.id],
        endpoint_private_access=True,
        endpoint_public_access=settings.endpoint_public_access,
        public_access_cidrs=list(settings.public_access_cidrs) or None,
    )


def imds_v2_only() -> aws.ec2.LaunchTemplateMetadataOptionsArgs:
    """Instance metadata by session token only, one hop away."""
    return aws.ec2.LaunchTemplateMetadataOptionsArgs(
        http_endpoint="enabled",
        http_tokens="required",
        # 1: containers cannot reach the instance's credentials; pods use Pod Identity.
        http_put_response_hop_limit=1,
    )


def node_volume(group: NodeGroupConfig) -> aws.ec2.LaunchTemplateBlockDeviceMappingArgs:
    """A node's data volume: encrypted gp3 of the group's size."""
    # Bottlerocket keeps images and pod volumes (the pulled bundle) on its second disk.
    device = "/dev/xvdb" if group.ami_type.startswith("BOTTLEROCKET") else "/dev/xvda"
    return aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
        device_name=device,
        ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
            volume_size=group.disk_gib,
            volume_type="gp3",
            encrypted="true",
            delete_on_termination="true",
        ),
    )


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
