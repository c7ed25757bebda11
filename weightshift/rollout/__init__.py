"""The rollout: capacity, await budgets, the alarms' arithmetic (rates, the dead man's
switch), the rollback record, pod scheduling, and the rollout commands (``commands``, over
the Pulumi Automation API) with their history.

Imports: ``weightshift.stages``, ``weightshift.config``, ``weightshift.facts``,
``weightshift.console`` and ``weightshift.lambdas`` (the record's shape). The domain modules
import nothing of Pulumi; ``commands`` and ``history`` sit above the components and are
imported only by the command line.
"""
