"""weightshift: safe rollouts of LLM versions on AWS.

The package is laid out by capability (``docs/architecture.md``):

- ``config``, ``facts``, ``console``: the stack config, platform facts with their sources,
  and what the command line prints; they serve every other package.
- ``bundles``: the artifact bundle (layout, versioning, manifest and diff, the S3 store).
- ``rollout``: the rollout's control logic (stages, capacity, budgets, alarms' arithmetic,
  the rollback record) and the rollout commands.
- ``preview``: the offline preview (synth under Pulumi mocks, plan, policy check, chart).
- ``gateway``: the data plane in every inference pod.
- ``lambdas``: the rollback function (standard library and boto3 only).
- ``cli``: the ``weightshift`` command.

Only ``preview`` and the rollout commands import Pulumi (``.importlinter`` holds it).
"""
