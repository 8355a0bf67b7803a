"""Combinations of gates: ``any(...)`` escalates if one of its gates does, ``all(...)`` only if every one does."""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import Block, SessionGate


@dataclass(frozen=True)
class _Combination:
    """What both combinations share: binding members to a replay session, and whether any member needs one."""

    gates: tuple

    def bind(self, session, policy):
        return type(self)(tuple(_bind(g, session, policy) for g in self.gates))

    def bind_session(self, session, policy):
        """Members that need the session (the oracle) share one tapped session; the others stay as they are."""
        if not needs_session(self):
            return session, self
        from .oracle import prepare_session

        return prepare_session(self, session, policy)


@dataclass(frozen=True)
class AnyGate(_Combination):
    def escalate(self, block: Block) -> bool:
        return any(g.escalate(block) for g in self.gates)


@dataclass(frozen=True)
class AllGate(_Combination):
    def escalate(self, block: Block) -> bool:
        return all(g.escalate(block) for g in self.gates)


def _bind(gate, session, policy):
    bind = getattr(gate, "bind", None)
    return bind(session, policy) if bind is not None else gate


def needs_session(gate) -> bool:
    """Whether a gate (or one inside a combination) must be bound to a replay session (the oracle)."""
    if isinstance(gate, (AnyGate, AllGate)):
        return any(needs_session(g) for g in gate.gates)
    return isinstance(gate, SessionGate) and not isinstance(gate, type)
