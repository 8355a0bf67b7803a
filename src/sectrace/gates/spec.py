"""Gate specs as people type them: ``entropy:2.5``, ``margin:0.2``, ``logprob:-1.5``, ``random:0.3``."""

from __future__ import annotations

from ..errors import UserError
from .builtin import Always, MaxEntropy, Margin, MeanEntropy, MinLogProb, Never, RandomGate

GATES = {
    "always": (Always, None, "escalate every block"),
    "never": (Never, None, "never escalate (edge only)"),
    "entropy": (MaxEntropy, 2.5, "max token entropy in the block above T nats (the study's gate)"),
    "entropy-mean": (MeanEntropy, 2.0, "mean token entropy in the block above T nats"),
    "margin": (Margin, 0.2, "smallest top1-top2 probability margin below T"),
    "logprob": (MinLogProb, -1.5, "smallest drafted log-prob below T nats"),
    "random": (RandomGate, 0.5, "escalate with probability T (baseline)"),
}


def gate_help() -> str:
    return "; ".join(f"{name}{':T' if default is not None else ''} = {text}"
                     for name, (_, default, text) in GATES.items())


def parse_gate(spec: str):
    """A gate object from its spec; the spec string doubles as the gate's label in results."""
    text = spec.strip().lower()
    name, _, arg = text.partition(":")
    if name not in GATES:
        raise UserError(f"unknown gate {spec!r}; known gates: {', '.join(GATES)} (e.g. --gate entropy:2.5)")
    cls, default, _ = GATES[name]
    if default is None:
        if arg:
            raise UserError(f"gate {name!r} takes no threshold; write just {name}")
        return cls()
    try:
        value = float(arg) if arg else default
    except ValueError:
        raise UserError(f"cannot read the threshold in gate {spec!r}; write e.g. {name}:{default}") from None
    if name == "random" and not 0.0 <= value <= 1.0:
        raise UserError(f"random:{value} needs a probability between 0 and 1")
    return cls(value)
