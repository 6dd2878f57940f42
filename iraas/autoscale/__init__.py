"""Scaling: the pure decision (`rules`) and the signals it is given (`signals`)."""

from .rules import Decision, Observation, Policy, State, decide, recommend
from .signals import Load, mean_cpu, mean_rate, wait_at_full_size

__all__ = [
    "Decision",
    "Load",
    "Observation",
    "Policy",
    "State",
    "decide",
    "mean_cpu",
    "mean_rate",
    "recommend",
    "wait_at_full_size",
]
