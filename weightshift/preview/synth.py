"""Offline synthesis: run the real Pulumi program under Pulumi's mocks.

No cloud credentials, no Pulumi CLI. The program (``__main__.py`` of the
project) runs exactly as ``pulumi up`` would run it, but every resource
registration is answered by :class:`OfflineMocks` and recorded by
:class:`RecordingMonitor`, which keeps what the engine would have received:
type, name, parent, provider and inputs. The result is the desired resource
graph, which ``weightshift synth`` prints, ``weightshift plan`` diffs stage by
stage and ``weightshift policy check`` validates.

This module imports Pulumi: it is the one place in the package that must.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import functools
import hashlib
import importlib
import json
import runpy
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import Mocks, rpc
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs, set_mocks
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from weightshift.bundles.catalog import OFFLINE_CATALOG, BundleCatalog, LocalCatalog
from weightshift.config import NAMESPACE, StackConfig, load
from weightshift.gates.verdict import BLOCKED_BY_EVALUATION
from weightshift.rollout.record import RollbackRecord, set_offline

OFFLINE_ACCOUNT = "123456789012"
DEFAULT_CATALOG = "bundles"
"""The offline catalog's folder in the project: ``bundles/<name>/v<X.Y.Z>/``."""
"""The account id mocked resources report; never a real account."""


UNKNOWN = "(unknown)"
"""An input whose value no mock provides; only a ``preview`` synthesis has them, and the
tests require there be none (every output the program reads is mocked or a placeholder)."""


class SynthError(Exception):
    """Synthesis could not run: a missing project or stack, a bad override, a program error."""


class StageBlocked(SynthError):
    """The program refused the stage for a reason of the rollout's, not of the config (the
    candidate's evaluation does not pass): ``plan`` shows the stage as blocked."""


@dataclass(frozen=True)
class Resource:
    urn: str
    type: str
    name: str
    parent: str | None
    provider: str | None
    custom: bool
    inputs: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    """What the (mocked) provider reported: the inputs plus computed properties."""
    dependencies: tuple[str, ...] = ()
    """URNs this resource depends on (``depends_on`` and every input's source)."""
    property_dependencies: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Input name -> URNs of the resources its value came from."""
    custom_timeouts: dict[str, str] = field(default_factory=dict)
    """``create``/``update``/``delete`` budgets the engine (and the provider's await) get."""

    def to_json(self) -> dict[str, Any]:
        return {
            "urn": self.urn,
            "type": self.type,
            "name": self.name,
            "parent": self.parent,
            "provider": self.provider,
            "custom": self.custom,
            "inputs": self.inputs,
            "dependencies": list(self.dependencies),
            **({"customTimeouts": self.custom_timeouts} if self.custom_timeouts else {}),
        }


@dataclass
class Graph:
    """The desired state of one stack: resources in registration order and stack outputs."""

    stack: str
    config: StackConfig
    resources: list[Resource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def by_urn(self) -> dict[str, Resource]:
        return {resource.urn: resource for resource in self.resources}

    def of_type(self, type_: str) -> list[Resource]:
        return [resource for resource in self.resources if resource.type == type_]

    def named(self, name: str, kind: str | None = None) -> Resource:
        """The resource called ``name``; ``kind`` (e.g. ``LoadBalancer``) picks one of several."""
        found = [
            r
            for r in self.resources
            if r.name == name and (kind is None or r.type.rsplit(":", 1)[-1] == kind)
        ]
        if len(found) != 1:
            kinds = sorted(r.type for r in self.resources if r.name == name)
            raise KeyError(f"{len(found)} resources named {name!r} (kind {kind}); types: {kinds}")
        return found[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "resources": [resource.to_json() for resource in self.resources],
            "outputs": self.outputs,
        }


# --- project and stack config -----------------------------------------------------------


def find_project(start: Path) -> Path:
    """The nearest folder at or above ``start`` holding ``Pulumi.yaml`` and ``__main__.py``."""
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / "Pulumi.yaml").is_file() and (folder / "__main__.py").is_file():
            return folder
    raise SynthError(
        f"No Pulumi project found at or above {start}: run from the weightshift checkout "
        "(the folder with Pulumi.yaml and __main__.py) or pass --project DIR."
    )


def project_name(project: Path) -> str:
    data = yaml.safe_load((project / "Pulumi.yaml").read_text(encoding="utf-8")) or {}
    return str(data.get("name", "weightshift"))


def stack_names(project: Path) -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in project.glob("Pulumi.*.yaml"))


class _StackFileLoader(yaml.SafeLoader):
    """YAML as the Pulumi engine reads a stack file: a key given twice in one mapping is an
    error (the engine refuses it), not silently the last one."""


def _unique_mapping(loader: _StackFileLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            first = seen[key].start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} is given twice in one mapping (first on line {first}); "
                "the Pulumi engine refuses this: merge the two into one",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StackFileLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _unique_mapping,
)


# The engine keeps a timestamp (``until: 2026-11-28T09:00:00+00:00``) as the string written;
# PyYAML would make it a datetime, which is not JSON and not what the program receives.
def _timestamp_as_written(loader: _StackFileLoader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


_StackFileLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_written)


def _yaml_error(path: Path, text: str, exc: yaml.YAMLError) -> str:
    """A YAML error as one paragraph naming the file, line and column, then the source line
    and a caret under the problem (kept as written by the error printer)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if mark is None:
        return f"{path} is not valid YAML: {problem}. Fix the file and run again."
    lines = text.splitlines()
    source = lines[mark.line] if mark.line < len(lines) else ""
    because = f" ({context})" if context else ""
    return (
        f"{path}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML: "
        f"{problem}{because}. Fix the file and run again.\n"
        f"    {source}\n"
        f"    {' ' * mark.column}^"
    )


def stack_config(project: Path, stack: str) -> dict[str, Any]:
    """The ``config:`` block of ``Pulumi.<stack>.yaml``, keys fully qualified."""
    path = project / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        known = ", ".join(stack_names(project)) or "none"
        raise SynthError(
            f"Unknown stack {stack!r}: there is no {path.name} in {project}. "
            f"Stacks here: {known}. Pass --stack with one of them, or create {path.name}."
        )
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.load(text, Loader=_StackFileLoader)
    except yaml.YAMLError as exc:
        raise SynthError(_yaml_error(path, text, exc)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SynthError(
            f"{path.name}: the document is a {_yaml_kind(data)}, not a mapping; a stack file "
            "holds `config:` followed by its keys (see Pulumi.prod.yaml)."
        )
    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise SynthError(
            f"{path.name}: `config:` is a {_yaml_kind(config)}; it must be a mapping of keys "
            "to values."
        )
    return {str(key): value for key, value in config.items()}


def _yaml_kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    return f"{type(value).__name__} scalar"


def apply_overrides(values: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set key=value`` overrides; keys are relative to ``weightshift:`` unless qualified.

    ``rollout.stage=3`` sets ``weightshift:rollout`` -> ``stage``; values are YAML scalars
    or flow collections (``3``, ``true``, ``[a, b]``).
    """
    result = copy.deepcopy(dict(values))
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SynthError(
                f"--set {override!r} is not key=value: write e.g. --set rollout.stage=3 "
                "(keys are relative to weightshift:)."
            )
        try:
            value = yaml.load(raw, Loader=_StackFileLoader) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        qualified = key if ":" in key else f"{NAMESPACE}:{key}"
        top, *path = qualified.split(".")
        if not path:
            result[top] = value
            continue
        node = result.setdefault(top, {})
        if isinstance(node, str):
            try:
                node = result[top] = json.loads(node)
            except json.JSONDecodeError:
                node = None
        for part in path[:-1]:
            if not isinstance(node, dict):
                break
            node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SynthError(
                f"--set {override!r}: {'.'.join([top, *path[:-1]])} is not an object, so it "
                "has no fields to set."
            )
        node[path[-1]] = value
    return result


# --- mocks ------------------------------------------------------------------------------


def _digest(*parts: str) -> str:
    return hashlib.sha256("::".join(parts).encode()).hexdigest()


_ARN_SERVICE = {"lb": "elasticloadbalancing", "cloudwatch": "logs"}


def _tail(type_: str) -> tuple[str, str]:
    """``aws:lb/targetGroup:TargetGroup`` -> (``elasticloadbalancing``, ``targetGroup``)."""
    module = type_.split(":")[1] if type_.count(":") >= 2 else type_
    service, _, kind = module.partition("/")
    return _ARN_SERVICE.get(service, service), kind or service


_ID_PREFIXES = {
    "aws:ec2/vpc:Vpc": "vpc",
    "aws:ec2/subnet:Subnet": "subnet",
    "aws:ec2/securityGroup:SecurityGroup": "sg",
    "aws:ec2/launchTemplate:LaunchTemplate": "lt",
}
"""Resource types whose id is a prefix and 17 hex digits (``vpc-0123...``)."""


def mocked_state(
    type_: str, name: str, inputs: dict[str, Any], region: str, partition: str
) -> tuple[str, dict[str, Any]]:
    """What a real provider would report after creating the resource, made up deterministically."""
    h = _digest(type_, name)
    service, kind = _tail(type_)
    resource_id = _mocked_id(type_, name, inputs, h)
    outputs = _mocked_outputs(
        type_, name, inputs, resource_id, h, region=region, partition=partition
    )
    state = {**inputs, **outputs}
    if "arn" not in state:
        state["arn"] = f"arn:{partition}:{service}:{region}:{OFFLINE_ACCOUNT}:{kind}/{resource_id}"
    state.setdefault("name", inputs.get("name") or f"{name}-{h[:7]}")
    for output in computed_strings(type_):
        state.setdefault(output, placeholder(name, output))
    return resource_id, state


def _mocked_id(type_: str, name: str, inputs: dict[str, Any], h: str) -> str:
    """The resource's made-up id: a bucket's name, ``vpc-...``-style ids, else name and hash."""
    if type_ == "aws:s3/bucket:Bucket":
        bucket: str = inputs.get("bucket") or f"{name}-{h[:8]}"
        return bucket
    if type_ in _ID_PREFIXES:
        return f"{_ID_PREFIXES[type_]}-{h[:17]}"
    return f"{name}-{h[:8]}"


def _mocked_outputs(
    type_: str,
    name: str,
    inputs: dict[str, Any],
    resource_id: str,
    h: str,
    *,
    region: str,
    partition: str,
) -> dict[str, Any]:
    """The outputs the provider adds to (or replaces in) the inputs, by resource type."""
    account = f"{region}:{OFFLINE_ACCOUNT}"
    if type_ == "aws:s3/bucket:Bucket":
        return {"bucket": resource_id, "arn": f"arn:{partition}:s3:::{resource_id}"}
    if type_ == "aws:lb/loadBalancer:LoadBalancer":
        suffix = f"app/{name[:20]}-{h[:6]}/{h[6:22]}"
        return {
            "arn": f"arn:{partition}:elasticloadbalancing:{account}:loadbalancer/{suffix}",
            "arnSuffix": suffix,
            "dnsName": f"{name[:20]}-{h[:6]}.{region}.elb.amazonaws.com",
            "zoneId": "Z35SXDOTRQ7X7K",
        }
    if type_ == "aws:lb/targetGroup:TargetGroup":
        suffix = f"targetgroup/{name[:24]}-{h[:6]}/{h[6:22]}"
        return {
            "arn": f"arn:{partition}:elasticloadbalancing:{account}:{suffix}",
            "arnSuffix": suffix,
        }
    if type_ == "aws:ec2/eip:Eip":
        return {"publicIp": f"198.51.100.{int(h[:2], 16) % 254 + 1}"}
    if type_ == "aws:eks/cluster:Cluster":
        return {
            "endpoint": f"https://{h[:32].upper()}.gr7.{region}.eks.amazonaws.com",
            "certificateAuthority": {
                "data": "TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJTMHRMUzB0Q2c9PQ=="
            },
            "vpcConfig": {**inputs.get("vpcConfig", {}), "clusterSecurityGroupId": f"sg-{h[:17]}"},
        }
    if type_ == "aws:lambda/function:Function":
        function = inputs.get("name") or resource_id
        return {"arn": f"arn:{partition}:lambda:{account}:function:{function}"}
    if type_ == "aws:sns/topic:Topic":
        return {"arn": f"arn:{partition}:sns:{account}:{inputs.get('name') or resource_id}"}
    if type_ in (
        "aws:cloudwatch/metricAlarm:MetricAlarm",
        "aws:cloudwatch/compositeAlarm:CompositeAlarm",
    ):
        alarm = inputs.get("name") or inputs.get("alarmName") or resource_id
        return {"arn": f"arn:{partition}:cloudwatch:{account}:alarm:{alarm}"}
    if type_ == "aws:eks/nodeGroup:NodeGroup":
        group = inputs.get("nodeGroupName") or f"{inputs.get('nodeGroupNamePrefix', name)}{h[:8]}"
        return {
            "nodeGroupName": group,
            "resources": [{"autoscalingGroups": [{"name": f"eks-{group}-{h[8:16]}"}]}],
        }
    if type_ == "aws:ec2/launchTemplate:LaunchTemplate":
        return {"latestVersion": 1}
    return {}


def placeholder(resource: str, output: str) -> str:
    """How the offline graph shows a value only the provider knows after deploying: the
    resource and output it comes from, so every input the engine would receive appears."""
    return f"(known after deploy: {resource}.{output})"


@functools.cache
def computed_strings(type_: str) -> tuple[str, ...]:
    """The string outputs a provider always reports for ``type_`` (``keyId`` of a KMS key),
    read off the SDK's resource class: getters typed ``Output[str]``, not ``Optional``."""
    package, module, kind = [*type_.split(":"), "", ""][:3]
    if package != "aws" or not module or not kind:
        return ()
    try:
        cls = getattr(importlib.import_module(f"pulumi_aws.{module.split('/')[0]}"), kind)
    except (ImportError, AttributeError):
        return ()
    found = []
    for attribute in vars(cls).values():
        getter = attribute.fget if isinstance(attribute, property) else None
        name = getattr(getter, "_pulumi_name", None)
        if (
            name
            and getter is not None
            and getter.__annotations__.get("return") == pulumi.Output[str]
        ):
            found.append(str(name))
    return tuple(sorted(found))


class OfflineMocks(Mocks):
    """Answers every registration with :func:`mocked_state`; refuses provider functions."""

    def __init__(self, region: str, partition: str) -> None:
        self.region = region
        self.partition = partition

    def new_resource(self, args: MockResourceArgs) -> tuple[str, dict[str, Any]]:
        return mocked_state(args.typ, args.name, args.inputs, self.region, self.partition)

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            # Who deploys is not config; offline it is the made-up account.
            identity = {
                "accountId": OFFLINE_ACCOUNT,
                "arn": f"arn:{self.partition}:iam::{OFFLINE_ACCOUNT}:role/offline",
                "userId": "AROAOFFLINE",
                "id": OFFLINE_ACCOUNT,
            }
            return identity, []
        raise SynthError(
            f"the program called {args.token}, a provider function that cannot be answered "
            "offline: declare the value in stack config instead, so reviews see it."
        )


class RecordingMonitor(MockMonitor):
    """Pulumi's mock monitor, keeping each registration as the engine would receive it."""

    def __init__(self, mocks: Mocks) -> None:
        super().__init__(mocks)
        self.records: list[Resource] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.type != "pulumi:pulumi:Stack":
            inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
            timeouts = request.customTimeouts
            self.records.append(
                Resource(
                    urn=response.urn,
                    type=request.type,
                    name=request.name,
                    parent=request.parent or None,
                    provider=request.provider or None,
                    custom=bool(request.custom),
                    inputs=_plain(inputs),
                    outputs=_plain({**self.resources[response.urn].state, "id": response.id}),
                    dependencies=tuple(sorted(set(request.dependencies))),
                    property_dependencies={
                        key: tuple(sorted(set(deps.urns)))
                        for key, deps in request.propertyDependencies.items()
                    },
                    custom_timeouts={
                        phase: str(getattr(timeouts, phase))
                        for phase in ("create", "update", "delete")
                        if timeouts is not None and getattr(timeouts, phase)
                    },
                )
            )
        return response


def _plain(value: Any) -> Any:
    """JSON-ready form of deserialized inputs: secrets hidden, whole floats as ints."""
    if rpc.is_rpc_secret(value):
        return "[secret]"
    if isinstance(value, pulumi.output.Unknown):
        return UNKNOWN
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, pulumi.FileAsset):
        # What the engine compares: the content, not the object.
        content = Path(str(value.path)).read_bytes()
        return {"file": Path(str(value.path)).name, "sha256": hashlib.sha256(content).hexdigest()}
    if isinstance(value, pulumi.AssetArchive):
        return {"archive": {name: _plain(asset) for name, asset in sorted(value.assets.items())}}
    return str(value)


@contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def _pulumi_config(values: Mapping[str, Any]) -> dict[str, str]:
    """Config as the engine hands it to a program: strings, objects as JSON."""
    return {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in values.items()
        if value is not None
    }


def offline_catalog(project: Path, folder: Path | None = None) -> LocalCatalog:
    """The local bundle folders synthesis reads manifests from (default: ``bundles/``)."""
    return LocalCatalog(folder if folder is not None else project / DEFAULT_CATALOG)


def synthesize(
    project: Path,
    stack: str,
    values: Mapping[str, Any],
    catalog: BundleCatalog | None = None,
    record: RollbackRecord | None = None,
    *,
    preview: bool = False,
) -> Graph:
    """Run the program of ``project`` for ``stack`` with config ``values``, offline.

    The config is validated first, so a bad value fails with the config's own
    message before the program starts. Bundle manifests come from ``catalog``
    (default: the project's ``bundles/`` folder), never from S3; the rollback record is
    ``record`` (default: none), never read from SSM. With ``preview``, outputs no mock
    provides are unknown (as in ``pulumi preview``) instead of absent.
    """
    config = load(values, source=f"config of stack {stack}")
    context = contextvars.Context()
    return context.run(
        _run,
        project,
        stack,
        config,
        values,
        catalog=catalog or offline_catalog(project),
        record=record,
        preview=preview,
    )


_LOOP: list[asyncio.AbstractEventLoop] = []
"""The event loop the last synthesis ran on."""


def _ensure_event_loop() -> None:
    """Pulumi's runtime runs on the thread's current event loop, and keeps state bound to
    the loop it first ran on. An ``asyncio.run`` earlier in the process (a test, the gateway)
    leaves no current loop: the one synthesis used before is put back, not a new one (the
    runtime would wait forever for futures of the old one)."""
    policy = asyncio.get_event_loop_policy()
    try:
        loop: asyncio.AbstractEventLoop | None = policy.get_event_loop()
    except RuntimeError:
        loop = None
    if loop is None or loop.is_closed():
        previous = _LOOP[-1] if _LOOP else None
        loop = previous if previous is not None and not previous.is_closed() else None
        loop = loop or policy.new_event_loop()
        policy.set_event_loop(loop)
    _LOOP[:] = [loop]


def _run(
    project: Path,
    stack: str,
    config: StackConfig,
    values: Mapping[str, Any],
    *,
    catalog: BundleCatalog,
    record: RollbackRecord | None,
    preview: bool,
) -> Graph:
    OFFLINE_CATALOG.set(catalog)
    set_offline(record)
    _ensure_event_loop()
    mocks = OfflineMocks(config.region, config.partition)
    monitor = RecordingMonitor(mocks)
    set_mocks(mocks, project=project_name(project), stack=stack, preview=preview, monitor=monitor)
    pulumi.runtime.set_all_config(_pulumi_config(values))
    outputs: dict[str, Any] = {}

    async def program() -> None:
        with _on_path(project):
            runpy.run_path(str(project / "__main__.py"), run_name="__main__")
        root = pulumi.runtime.settings.get_root_resource()
        exported = getattr(root, "outputs", {})
        resolved = await pulumi.Output.from_input(exported).future()
        outputs.update(resolved or {})

    try:
        _sync_await(run_pulumi_func(lambda: _sync_await(program())))
    except pulumi.RunError as exc:
        if str(exc).startswith(BLOCKED_BY_EVALUATION):
            raise StageBlocked(str(exc)) from None
        raise SynthError(str(exc)) from None
    except SynthError:
        raise
    except Exception as exc:
        raise SynthError(
            f"The program failed while synthesizing stack {stack!r}: {type(exc).__name__}: {exc}"
        ) from exc
    return Graph(
        stack=stack,
        config=config,
        resources=sorted(monitor.records, key=lambda resource: resource.urn),
        outputs=_plain(outputs),
    )


def synthesize_stack(
    project: Path,
    stack: str,
    overrides: Sequence[str] = (),
    catalog: BundleCatalog | None = None,
    record: RollbackRecord | None = None,
) -> Graph:
    """Synthesize ``Pulumi.<stack>.yaml`` with ``--set`` overrides applied."""
    values = apply_overrides(stack_config(project, stack), overrides)
    return synthesize(project, stack, values, catalog, record)
