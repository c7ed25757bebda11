"""Pulumi components of the weightshift program: one module per ComponentResource."""
