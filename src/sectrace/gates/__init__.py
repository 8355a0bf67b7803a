"""Gates: which drafted blocks go to the cloud."""

from .builtin import (
                      Always,
                      AudioShift,
                      Margin,
                      MaxEntropy,
                      McDropout,
                      MeanEntropy,
                      MinLogProb,
                      Never,
                      RandomGate,
                      Stability,
)
from .combine import AllGate, AnyGate
from .content import ContentGate
from .oracle import Oracle
from .spec import GATES, GateFileNotGiven, gate_help, parse_gate, parse_policy, split_top

__all__ = ["AllGate", "Always", "AnyGate", "AudioShift", "ContentGate", "GATES", "GateFileNotGiven", "MaxEntropy",
           "Margin", "McDropout", "MeanEntropy", "MinLogProb", "Never", "Oracle", "RandomGate", "Stability", "gate_help",
           "parse_gate", "parse_policy", "split_top"]
