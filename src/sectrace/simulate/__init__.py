"""Replay traces under policies and price the schedules on devices and networks."""

from ..network import Network
from .costs import CostModel, fit_costs
from .replay import FEATURES, Replay, Replayer, schedule_features, similarity
from .results import baselines, simulate, summarise
from .timing import breakdown, cost_matrix, cost_vector, latency

__all__ = ["CostModel", "FEATURES", "Network", "Replay", "Replayer", "baselines", "breakdown", "cost_matrix",
           "cost_vector", "fit_costs", "latency", "schedule_features", "similarity", "simulate", "summarise"]
