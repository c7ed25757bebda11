"""The rollout commands' refusal, apart from ``commands.py`` so that the command line can
catch it without importing the commands (and, through the gates, numpy, whose threads would
keep ``plan`` and ``policy check`` from forking their workers)."""

from __future__ import annotations


class RolloutError(Exception):
    """A rollout command refused or failed; the message says why and what to do."""
