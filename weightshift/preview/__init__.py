"""The offline preview: synthesize the Pulumi program under mocks (``synth``), every stage
and what it changes (``plan``), the policy pack over it (``policy``), the rollout chart.

Imports: Pulumi, the project's program (run, not imported), ``weightshift.config``,
``weightshift.bundles`` and ``weightshift.rollout``; imported only by the command line.
"""
