"""The weightshift policy pack: `pulumi preview --policy-pack policies` runs it.

The rules live in policies/rules.py so tests and `weightshift policy check` can call
them without starting the policy server that PolicyPack(...) starts. Each rule's
enforcement level comes from policies/config.json (the pack's config, which
`weightshift policy check` reads too); `--policy-pack-config FILE` overrides it.
"""

import json
from pathlib import Path
from typing import Any

from pulumi_policy import EnforcementLevel, PolicyPack
from rules import POLICIES  # type: ignore[import-not-found]  # run from policies/


def initial_config() -> dict[str, Any]:
    """policies/config.json, for the rules of this pack (a stage-change rule is
    `weightshift policy check`'s alone) and with levels as the SDK takes them."""
    data = json.loads((Path(__file__).resolve().parent / "config.json").read_text("utf-8"))
    names = {policy.name for policy in POLICIES} | {"all"}
    config: dict[str, Any] = {}
    for name, value in data.items():
        if name not in names:
            continue
        if isinstance(value, str):
            config[name] = EnforcementLevel(value)
        else:
            entry = dict(value)
            if "enforcementLevel" in entry:
                entry["enforcementLevel"] = EnforcementLevel(entry["enforcementLevel"])
            config[name] = entry
    return config


PolicyPack(
    name="weightshift",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=list(POLICIES),
    initial_config=initial_config(),
)
