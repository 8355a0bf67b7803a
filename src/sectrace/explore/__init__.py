"""Exploration: which runs a trace records (policies), recording them live (recorder), and synthetic traces."""

from .policies import EXPLORE_GATES, default_exploration

__all__ = ["EXPLORE_GATES", "default_exploration"]
