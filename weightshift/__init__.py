"""weightshift: safe rollouts of LLM versions on AWS.

Plain Python; only synth and policy import Pulumi.
"""
