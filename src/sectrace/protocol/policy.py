"""What a policy is: the knobs of the draft–verify protocol, as plain data.

A policy says *what happens* (which tokens are drafted, escalated, accepted);
it says nothing about *how long it takes*: that is the simulator's business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

PRIVACY_MODES = ("token-only", "features", "raw")
CLOUD_CACHES = ("stateful", "stateless")
#: Which verifier judgement a privacy mode sees: in `token-only` the cloud never gets audio.
VERIFIER_MODE_FOR_PRIVACY = {"token-only": "blind", "features": "audio", "raw": "audio"}


from ..errors import UserError


class PolicyError(UserError, ValueError):
    """A policy that cannot run; the message says which knob and how to fix it."""


@dataclass(frozen=True)
class Accept:
    """Acceptance rule for one drafted token, judged by the verifier.

    kind ``top1``: the token must be the verifier's own top-1 (lossless);
    ``rank``: its rank under the verifier is at most ``value`` (the study used 20);
    ``prob``: the verifier gives it probability at least ``value`` (in (0, 1]).
    """

    kind: str = "rank"
    value: float = 20

    def __post_init__(self):
        if self.kind not in ("top1", "rank", "prob"):
            raise PolicyError(f"unknown acceptance rule {self.kind!r}; use top1, rank:R or prob:P")
        if not math.isfinite(self.value):
            raise PolicyError(f"{self.kind}:{self.value} needs a finite number, e.g. rank:20 or prob:0.1")
        if self.kind == "rank" and (self.value < 1 or int(self.value) != self.value):
            raise PolicyError(f"rank:{self.value} needs a whole number R >= 1, e.g. rank:20")
        if self.kind == "prob" and not 0.0 < self.value <= 1.0:  # prob:0 would accept every token
            raise PolicyError(f"prob:{self.value:g} needs a probability above 0 and at most 1, e.g. prob:0.1")

    def accepts(self, rank: int, prob: float) -> bool:
        if self.kind == "top1":
            return rank == 1
        if self.kind == "rank":
            return rank <= self.value
        return prob >= self.value

    @classmethod
    def parse(cls, text: str) -> "Accept":
        """``top1``, ``rank:20`` or ``prob:0.1``."""
        text = text.strip().lower()
        if text in ("top1", "exact", "top-1"):
            return cls("top1", 1)
        kind, _, value = text.partition(":")
        if kind not in ("rank", "prob") or not value:
            raise PolicyError(f"cannot read acceptance rule {text!r}; write top1, rank:20 or prob:0.1")
        try:
            number = float(value)
        except ValueError:
            raise PolicyError(f"cannot read the number in acceptance rule {text!r}; e.g. rank:20") from None
        return cls(kind, int(number) if kind == "rank" and number.is_integer() else number)

    def __str__(self) -> str:
        return "top1" if self.kind == "top1" else f"{self.kind}:{self.value:g}"


@dataclass(frozen=True)
class Block:
    """The drafted block a gate looks at: drafter-side signals only (what the device knows)."""

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    entropies: tuple[float, ...]
    margins: tuple[float, ...]
    start: int  # number of tokens committed before the block
    extras: tuple[dict, ...] = ()  # per token, optional signals a trace carries (x_* columns)


class Gate(Protocol):
    """Decides, per drafted block, whether to escalate it to the cloud verifier."""

    def escalate(self, block: Block) -> bool: ...


@runtime_checkable
class SessionGate(Protocol):
    """A gate that must see the session it gates: the replay-only oracle asks the session's verifier.

    :func:`sectrace.protocol.run` binds such a gate to each utterance's session before decoding
    (``bind_session`` returns the session to decode with and the bound gate), so every caller of
    ``run`` (replay, gate evaluation, reports, timelines) handles it alike."""

    def escalate(self, block: Block) -> bool: ...

    def bind_session(self, session, policy: "Policy") -> tuple: ...


@dataclass(frozen=True)
class Policy:
    """One configuration of the protocol.

    ``k`` is the block size; ``adaptive`` (a probability) stops drafting a block early
    after a token the drafter itself gives less than that probability, the way
    transformers' dynamic assistant tokens do. ``k = 0`` with an always gate is
    cloud-only decoding: every token is the verifier's bonus token.
    """

    k: int = 5
    gate: Gate | None = None
    gate_spec: str = "always"
    accept: Accept = field(default_factory=Accept)
    bonus: bool = True
    privacy: str = "token-only"
    cloud_cache: str = "stateful"
    max_new_tokens: int = 64
    adaptive: float | None = None
    name: str = ""

    def __post_init__(self):
        if self.k < 0:
            raise PolicyError(f"block size k={self.k} must be >= 0")
        if self.privacy not in PRIVACY_MODES:
            raise PolicyError(f"unknown privacy mode {self.privacy!r}; use one of {', '.join(PRIVACY_MODES)}")
        if self.cloud_cache not in CLOUD_CACHES:
            raise PolicyError(f"unknown cloud cache {self.cloud_cache!r}; use stateful or stateless")
        if self.max_new_tokens < 1:
            raise PolicyError("max_new_tokens must be at least 1")
        if self.adaptive is not None and not 0.0 < self.adaptive < 1.0:
            raise PolicyError(f"adaptive threshold {self.adaptive} must be a probability in (0, 1)")
        if self.k == 0 and not self.bonus:
            raise PolicyError("k=0 (cloud decoding) needs the bonus token on, or nothing is ever committed")

    @property
    def verifier_mode(self) -> str:
        return VERIFIER_MODE_FOR_PRIVACY[self.privacy]

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        parts = [f"k={self.k}", f"gate={self.gate_spec}", f"accept={self.accept}"]
        if self.adaptive is not None:
            parts.append(f"adaptive={self.adaptive:g}")
        if not self.bonus:
            parts.append("no-bonus")
        parts.append(self.privacy)
        if self.cloud_cache != "stateful":
            parts.append(self.cloud_cache)
        return " ".join(parts)


# The two gates the protocol itself needs for its baselines; the rest live in ``sectrace.gates``.
@dataclass(frozen=True)
class Always:
    """Escalate every block (the lossless reference with exact top-1 acceptance)."""

    def escalate(self, block: Block) -> bool:
        return True


@dataclass(frozen=True)
class Never:
    """Never escalate: the drafter's own caption."""

    def escalate(self, block: Block) -> bool:
        return False


def drafter_only(max_new_tokens: int = 64) -> Policy:
    """The edge-only baseline: the drafter's greedy caption, one token at a time, no cloud."""
    return Policy(k=1, gate=Never(), gate_spec="never", max_new_tokens=max_new_tokens, name="edge-only")


def cloud_only(max_new_tokens: int = 64) -> Policy:
    """The cloud-only baseline: raw audio goes up, the verifier decodes greedily."""
    return Policy(k=0, gate=Always(), gate_spec="always", accept=Accept("top1", 1), bonus=True,
                  privacy="raw", max_new_tokens=max_new_tokens, name="cloud-only")


def lossless(k: int, max_new_tokens: int = 64, privacy: str = "features") -> Policy:
    """Always escalate with exact top-1 acceptance: the output must equal the verifier's greedy path."""
    return Policy(k=k, gate=Always(), gate_spec="always", accept=Accept("top1", 1), privacy=privacy,
                  max_new_tokens=max_new_tokens)

