"""Built-in gates: thresholds on the drafter's own signals, all computable on the device.

Convention: a gate escalates when the block looks *risky*: entropy above, margin below,
log-prob below its threshold, for any token of the block (``entropy-mean`` averages).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..errors import UserError
from ..protocol import Always, Block, Never


@dataclass(frozen=True)
class MaxEntropy:
    """The study's gate: escalate when any drafted token's entropy (nats) exceeds the threshold."""

    threshold: float

    def escalate(self, block: Block) -> bool:
        return max(block.entropies) > self.threshold


@dataclass(frozen=True)
class MeanEntropy:
    threshold: float

    def escalate(self, block: Block) -> bool:
        return sum(block.entropies) / len(block.entropies) > self.threshold


@dataclass(frozen=True)
class Margin:
    """Escalate when the drafter's top-1/top-2 probability margin drops below the threshold anywhere."""

    threshold: float

    def escalate(self, block: Block) -> bool:
        return min(block.margins) < self.threshold


@dataclass(frozen=True)
class MinLogProb:
    """Escalate when some drafted token has log-prob (nats) below the threshold."""

    threshold: float

    def escalate(self, block: Block) -> bool:
        return min(block.logprobs) < self.threshold


@dataclass(frozen=True)
class RandomGate:
    """Escalate with probability p, as a baseline. Deterministic per block, so replays repeat exactly."""

    p: float
    seed: int = 0

    def escalate(self, block: Block) -> bool:
        h = hashlib.blake2b(repr((self.seed, block.start, block.tokens)).encode(), digest_size=8)
        return int.from_bytes(h.digest(), "little") / 2**64 < self.p


__all__ = ["Always", "MaxEntropy", "MeanEntropy", "Margin", "MinLogProb", "Never", "RandomGate"]


# --- gates on optional per-node signals (x_* columns of a trace) ---------------------------------------
def _signal(block: Block, name: str) -> list[float]:
    """One optional x_* signal along the block; a clear error where the trace lacks it."""
    try:
        return [e[name] for e in block.extras]
    except (KeyError, TypeError):
        raise UserError(f"this gate needs the per-node signal x_{name}, which the trace lacks; record it when "
                        "collecting (see docs/trace-format.md) or use a gate on the drafter's logits") from None


@dataclass(frozen=True)
class Stability:
    """Escalate when the drafter's prediction was unstable as the block grew: min x_stability below T."""

    threshold: float

    def escalate(self, block: Block) -> bool:
        vals = [v for v in _signal(block, "stability") if v is not None]
        return not vals or min(vals) < self.threshold  # unknown stability counts as unstable


@dataclass(frozen=True)
class AudioShift:
    """Escalate when the drafter's distribution moves with the audio (max x_audio_shift above T):
    the block depends on what only the audio says, where a text-only drafter guess is most fragile."""

    threshold: float

    def escalate(self, block: Block) -> bool:
        vals = [v for v in _signal(block, "audio_shift") if v is not None]
        return bool(vals) and max(vals) > self.threshold


@dataclass(frozen=True)
class McDropout:
    """Escalate when MC-dropout shakes the drafter's choice: the smallest x_mc_agree (share of dropout passes
    whose top-1 is the drafted token) in the block is below T."""

    threshold: float

    def escalate(self, block: Block) -> bool:
        vals = [v for v in _signal(block, "mc_agree") if v is not None]
        return not vals or min(vals) < self.threshold  # unknown agreement counts as unstable, like Stability


__all__ += ["AudioShift", "McDropout", "Stability"]


def columns_needed(gate) -> set[str]:
    """The x_* columns a gate reads (through any(...)/all(...) and learned gates' features): what a collection
    must compute (collect) or a synthetic run must have ready before its gates decide (trace synth)."""

    fixed = {Stability: "x_stability", AudioShift: "x_audio_shift", McDropout: "x_mc_agree"}
    if type(gate) in fixed:
        return {fixed[type(gate)]}
    out = set()
    for inner in getattr(gate, "gates", ()) or ():
        out |= columns_needed(inner)
    doc = getattr(gate, "doc", None)
    if isinstance(doc, dict):
        out |= {f for f in doc.get("features", ()) if isinstance(f, str) and f.startswith("x_")}
    return out
