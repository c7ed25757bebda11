"""Evaluation reports: what a candidate bundle scored before it serves anyone, bound to its
exact digest (``report``), where they are kept (``store``), the importers for what teams
already produce, and ``weightshift eval run`` (the evaluation through the ALB's test route).
"""
