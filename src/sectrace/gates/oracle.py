"""The oracle gate: escalate exactly the blocks the verifier would change (the upper bound on any gate).

It needs the verifier's judgement, which a device never has, so it only works in replay.
It is a declared :class:`sectrace.protocol.SessionGate`: ``run`` asks it, per utterance, for a
session wrapper (:class:`Tap`, which remembers the states the drafter was asked about) and
a gate bound to it. The bound oracle looks up the block's first state, asks the same
session's verifier about the block, and escalates iff some drafted token would be
rejected under the policy's acceptance rule. Blocks it lets pass are therefore exactly
those the verifier would have accepted whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..protocol import Block


class Tap:
    """A session that forwards everything and remembers every state the drafter was asked to draft from."""

    def __init__(self, inner):
        self.inner = inner
        self.root = inner.root
        self.draft_states: list = []

    def draft(self, state):
        self.draft_states.append(state)
        return self.inner.draft(state)

    def advance(self, state, token):
        return self.inner.advance(state, token)

    def judge(self, state, tokens, mode):
        return self.inner.judge(state, tokens, mode)


@dataclass(frozen=True)
class Oracle:
    """Unbound: a placeholder until ``run`` binds it to an utterance's session."""

    def escalate(self, block: Block) -> bool:
        raise UserError("the oracle gate knows the verifier's answers, so it only works when replaying a trace "
                        "(sectrace simulate / gates frontier), not on a live device")

    def bind(self, tap: Tap, policy) -> "BoundOracle":
        if not isinstance(tap, Tap):
            raise TypeError("bind the oracle through bind_session")
        return BoundOracle(tap, policy.accept, policy.verifier_mode)

    def bind_session(self, session, policy):
        return prepare_session(self, session, policy)


class BoundOracle:
    __slots__ = ("tap", "accept", "mode")

    def __init__(self, tap: Tap, accept, mode: str):
        self.tap, self.accept, self.mode = tap, accept, mode

    def escalate(self, block: Block) -> bool:
        n = len(block.tokens)
        state = self.tap.draft_states[-n]  # the block's n drafts were the last n draft calls
        jg = self.tap.inner.judge(state, block.tokens, self.mode)
        acc = self.accept
        return any(not acc.accepts(jg[j].rank, jg[j].prob) for j in range(n))


def prepare_session(gate, session, policy):
    """(session, gate) to run ``policy`` with: a tapped session and the gate bound to it."""
    tap = Tap(session)
    return tap, gate.bind(tap, policy)
