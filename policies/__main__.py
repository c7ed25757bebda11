"""The weightshift policy pack: `pulumi preview --policy-pack policies` runs it.

The rules live in policies/rules.py so tests and `weightshift policy check` can call
them without starting the policy server that PolicyPack(...) starts.
"""

from pulumi_policy import EnforcementLevel, PolicyPack
from rules import POLICIES  # type: ignore[import-not-found]  # run from policies/

PolicyPack(
    name="weightshift",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=list(POLICIES),
)
