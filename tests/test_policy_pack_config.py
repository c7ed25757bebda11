"""The pack's config as the Pulumi engine checks it before any policy runs."""

from __future__ import annotations

import jsonschema

from policies.rules import POLICIES


def test_every_policy_accepts_the_empty_config_a_plain_preview_gives_it() -> None:
    """The engine validates each policy's config against its schema with {} when the run
    names no config file (pulumi/pulumi sdk/go/common/resource/analyzer/config.go); a
    required key there would fail `pulumi preview --policy-pack policies` outright."""
    for policy in POLICIES:
        schema = policy.config_schema
        if schema is None:
            continue
        document = {"type": "object", "properties": schema.properties}
        if schema.required:
            document["required"] = schema.required
        jsonschema.validate({}, document)
