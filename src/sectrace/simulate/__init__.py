"""Replay traces under policies and price the schedules on devices and networks."""

from ..network import Network
from .costs import FIT_ERROR_WARN, CostModel, fit_costs, fit_summary, fit_warning
from .replay import FEATURES, Replay, Replayer, schedule_features, similarity
from .results import baselines, from_row, simulate, summarise
from .timing import breakdown, cost_matrix, cost_vector, latency

__all__ = ["CostModel", "FEATURES", "FIT_ERROR_WARN", "Network", "Replay", "Replayer", "baselines", "breakdown",
           "cost_matrix", "cost_vector", "fit_costs", "fit_summary", "fit_warning", "from_row", "latency",
           "schedule_features", "similarity", "simulate", "summarise"]
