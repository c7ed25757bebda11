"""The EKS cluster the inference stacks run on: GPU node groups and the controllers they need."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.iam import POD_IDENTITY_TRUST, service_trust
from weightshift.config import ClusterConfig, NodeGroupConfig

GPU_TAINT_KEY = "nvidia.com/gpu"
"""Every GPU node carries ``nvidia.com/gpu=true:NoSchedule``; only pods that tolerate it
(the inference pods, the device plugin) land there."""
CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
LB_CONTROLLER_NAMESPACE = "kube-system"
LB_CONTROLLER_SERVICE_ACCOUNT = "aws-load-balancer-controller"
NVIDIA_CHART_REPO = "https://nvidia.github.io/k8s-device-plugin"
EKS_CHART_REPO = "https://aws.github.io/eks-charts"


def load_balancer_controller_policy(target_group_arns: Sequence[str]) -> str:
    """What the controller needs to keep pod IPs registered in our target groups, no more.

    The controller is used only for ``TargetGroupBinding`` (no Ingress, no Service load
    balancers, no security-group management: the program owns those rules), so it may
    describe, and register and deregister targets in these target groups only.
    """
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Describe",
                    "Effect": "Allow",
                    "Action": [
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
                    # Describe calls support no resource-level permissions.
                    "Resource": "*",
                },
                {
                    "Sid": "RegisterPodsInOurTargetGroups",
                    "Effect": "Allow",
                    "Action": [
                        "elasticloadbalancing:RegisterTargets",
                        "elasticloadbalancing:DeregisterTargets",
                    ],
                    "Resource": sorted(target_group_arns),
                },
            ],
        },
        sort_keys=True,
    )


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


class GpuCluster(pulumi.ComponentResource):
    """An EKS cluster (or an existing one) ready for GPU inference pods.

    Children when creating: ``{name}-secrets`` KMS key; ``{name}-control-plane`` LogGroup;
    ``{name}-role`` (cluster role) and ``{name}-nodes`` (node role) with their managed policy
    attachments; ``{name}`` EKS Cluster (private endpoint by default, secrets encrypted,
    every control-plane log); per node group a LaunchTemplate (IMDSv2 required, hop limit 1,
    encrypted gp3 root volume) and a managed NodeGroup (on-demand; GPU groups tainted
    ``nvidia.com/gpu:NoSchedule`` and labelled ``weightshift.io/pool=gpu``); add-ons
    ``eks-pod-identity-agent`` and ``vpc-cni`` (network policy enforcement on); the
    Kubernetes provider; the NVIDIA device plugin Helm release (only for AL2023 NVIDIA
    AMIs: Bottlerocket ships it); the AWS Load Balancer Controller Helm release with its
    Pod Identity role. With ``existing``: only the Kubernetes provider.
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
    ) -> k8s.Provider:
        kubeconfig = pulumi.Output.all(cluster, endpoint, certificate_authority).apply(
            lambda values: kubeconfig_for(values[0], values[1], values[2], args.region)
        )
        return k8s.Provider(
            f"{name}-k8s",
            kubeconfig=kubeconfig,
            enable_server_side_apply=True,
            delete_unreachable=False,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _create(self, name: str, args: GpuClusterArgs) -> None:
        settings = args.settings
        child = pulumi.ResourceOptions(parent=self)
        policy = f"arn:{args.partition}:iam::aws:policy"
        key = aws.kms.Key(
            f"{name}-secrets",
            description=f"EKS secrets of {name}",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            opts=child,
        )
        logs = aws.cloudwatch.LogGroup(
            f"{name}-control-plane",
            name=f"/aws/eks/{name}/cluster",
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
        cluster = aws.eks.Cluster(
            name,
            name=name,
            version=settings.version,
            role_arn=cluster_role.arn,
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=args.subnet_ids,
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
        groups = [
            self._node_group(
                name, cluster, node_role, node_policies, group=group, args=args, gpu=False
            )
            for group in (settings.system_nodes,)
        ] + [
            self._node_group(
                name, cluster, node_role, node_policies, group=group, args=args, gpu=True
            )
            for group in settings.gpu_node_groups
        ]
        addons = [
            aws.eks.Addon(
                f"{name}-pod-identity-agent",
                cluster_name=cluster.name,
                addon_name="eks-pod-identity-agent",
                resolve_conflicts_on_update="OVERWRITE",
                opts=pulumi.ResourceOptions(parent=self, depends_on=groups),
            ),
            aws.eks.Addon(
                f"{name}-vpc-cni",
                cluster_name=cluster.name,
                addon_name="vpc-cni",
                configuration_values=json.dumps({"enableNetworkPolicy": "true"}),
                resolve_conflicts_on_update="OVERWRITE",
                opts=child,
            ),
        ]
        self.cluster_name = cluster.name
        self.security_group_id = cluster.vpc_config.apply(
            lambda vpc: str(vpc.cluster_security_group_id)
        )
        self.kubernetes = self._kubernetes_provider(
            name,
            cluster.name,
            cluster.endpoint,
            cluster.certificate_authority.apply(lambda ca: str(ca.data)),
            args,
        )
        helm = pulumi.ResourceOptions(parent=self, provider=self.kubernetes, depends_on=addons)
        releases: list[pulumi.Resource] = []
        if any(group.ami_type.startswith("AL2023") for group in settings.gpu_node_groups):
            releases.append(
                k8s.helm.v3.Release(
                    f"{name}-nvidia-device-plugin",
                    name="nvidia-device-plugin",
                    chart="nvidia-device-plugin",
                    version=settings.device_plugin_chart_version,
                    repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=NVIDIA_CHART_REPO),
                    namespace="kube-system",
                    values={
                        "nodeSelector": self.gpu_node_labels,
                        "tolerations": [
                            {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
                        ],
                    },
                    atomic=True,
                    opts=helm,
                )
            )
        releases.append(self._load_balancer_controller(name, cluster, args, helm))
        self.ready = [*groups, *addons, *releases]

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
        labels = {**group.labels, "weightshift.io/pool": "gpu" if gpu else "system"}
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

    def _load_balancer_controller(
        self,
        name: str,
        cluster: aws.eks.Cluster,
        args: GpuClusterArgs,
        helm: pulumi.ResourceOptions,
    ) -> k8s.helm.v3.Release:
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            f"{name}-lb-controller", assume_role_policy=POD_IDENTITY_TRUST, opts=child
        )
        aws.iam.RolePolicy(
            f"{name}-lb-controller",
            role=role.id,
            policy=pulumi.Output.from_input(args.target_group_arns).apply(
                load_balancer_controller_policy
            ),
            opts=child,
        )
        association = aws.eks.PodIdentityAssociation(
            f"{name}-lb-controller",
            cluster_name=cluster.name,
            namespace=LB_CONTROLLER_NAMESPACE,
            service_account=LB_CONTROLLER_SERVICE_ACCOUNT,
            role_arn=role.arn,
            opts=child,
        )
        return k8s.helm.v3.Release(
            f"{name}-lb-controller",
            name="aws-load-balancer-controller",
            chart="aws-load-balancer-controller",
            version=args.settings.load_balancer_controller_chart_version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=EKS_CHART_REPO),
            namespace=LB_CONTROLLER_NAMESPACE,
            values={
                "clusterName": cluster.name,
                "region": args.region,
                "vpcId": args.vpc_id,
                "replicaCount": 2,
                "serviceAccount": {"create": True, "name": LB_CONTROLLER_SERVICE_ACCOUNT},
                # TargetGroupBinding only: no Ingress class, no Service webhook.
                "createIngressClassResource": False,
                "enableServiceMutatorWebhook": False,
                "nodeSelector": {"weightshift.io/pool": "system"},
            },
            atomic=True,
            opts=pulumi.ResourceOptions.merge(
                helm, pulumi.ResourceOptions(depends_on=[association])
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
