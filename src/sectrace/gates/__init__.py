"""Gates: which drafted blocks go to the cloud."""

from .builtin import Always, MaxEntropy, Margin, MeanEntropy, MinLogProb, Never, RandomGate
from .exploration import default_exploration
from .spec import GATES, gate_help, parse_gate

__all__ = ["Always", "GATES", "MaxEntropy", "Margin", "MeanEntropy", "MinLogProb", "Never", "RandomGate",
           "default_exploration", "gate_help", "parse_gate"]
