"""The draft–verify state machine, written once.

Live model backends (collect), the trace replay (simulate) and a live edge client all
drive this same function through the small :class:`Session` interface, so their logic
cannot drift apart. It does no I/O and reads no clock: it returns *what happened*, as
committed tokens and an ordered list of events (the schedule). How long each event
takes is decided elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol, Sequence

from .policy import Accept, Block, Policy, SessionGate


class CoverageMiss(Exception):
    """The run needs a decoding state the source cannot provide (e.g. a trace's trie was not explored there)."""

    def __init__(self, depth: int, what: str):
        super().__init__(f"{what} at depth {depth}")
        self.depth = depth
        self.what = what


class CloudUnavailable(Exception):
    """The verifier could not be asked (unreachable, timed out, refused). The run goes on without it:
    the edge commits its own draft, so a caption is never lost, and a :class:`Fallback` event records it."""


class DraftToken(NamedTuple):
    """The drafter's greedy next token at a state, with the signals a gate may use."""

    token: int
    logprob: float
    entropy: float
    margin: float
    eos: bool
    extra: dict | None = None  # optional per-token signals (a trace's x_* columns)
    topk_ids: tuple = ()
    topk_probs: tuple = ()


class Judgement(NamedTuple):
    """The verifier's view at one position of a block.

    ``rank``/``prob`` concern the drafted token at that position (rank 1 = the verifier's
    own top-1); ``top1`` is what the verifier would write there instead.
    """

    rank: int  # 0 where unknown (the bonus position, which judges no drafted token)
    prob: float
    top1: int
    top1_prob: float
    top1_eos: bool
    entropy: float = float("nan")


class Session(Protocol):
    """One utterance's decoding, as the protocol sees it. States are opaque handles."""

    root: Any

    def draft(self, state: Any) -> DraftToken: ...

    def advance(self, state: Any, token: int) -> Any: ...

    def judge(self, state: Any, tokens: Sequence[int], mode: str) -> Sequence[Judgement]:
        """Judgements at positions 0..len(tokens); the last is only used for its ``top1`` (the bonus)."""
        ...


# --- the schedule: what happened, in order -------------------------------------------
class Prefill(NamedTuple):
    """The edge encodes audio and prompt."""


class Draft(NamedTuple):
    """One drafter decode step; ``ctx`` caption tokens precede the drafted one."""

    ctx: int


class GateCall(NamedTuple):
    n: int


class Verify(NamedTuple):
    """One escalation: a round trip to the cloud verifier.

    ``n`` drafted tokens are judged after ``ctx`` committed caption tokens. ``unsent`` of
    those committed tokens were written on the edge since the cloud last heard from it
    (their ids must travel); ``pending`` tokens must be run through the verifier before the
    block (unsent ones plus its own last correction or bonus token). ``first`` marks the
    session's first call (stateful clouds prefill the prompt then).
    """

    n: int
    ctx: int
    unsent: int
    pending: int
    first: bool
    accepted: int
    corrected: int
    bonus: int


class Fallback(NamedTuple):
    """An escalation the cloud did not answer: ``n`` drafted tokens were committed unverified.

    Only live runs produce it (a trace always answers); ``n = 0`` marks cloud-only decoding that
    switched to the edge drafter for the rest of the caption."""

    n: int
    ctx: int
    reason: str


class CloudStart(NamedTuple):
    """Cloud-only decoding begins: the audio goes up and the cloud prefills."""


class CloudStep(NamedTuple):
    """One cloud decode step in cloud-only decoding (streamed down, no round trip each)."""

    ctx: int


class Commit(NamedTuple):
    """``n`` tokens become final on the edge (``total`` committed so far)."""

    n: int
    total: int


@dataclass
class Run:
    """The result of one policy on one utterance."""

    tokens: list[int] = field(default_factory=list)
    events: list = field(default_factory=list)
    drafted: int = 0
    blocks: int = 0
    escalations: int = 0
    verified: int = 0  # drafted tokens sent for verification
    accepted: int = 0
    corrected: int = 0
    bonus: int = 0
    fallbacks: int = 0  # escalations the cloud did not answer (live runs only)
    eos: bool = False

    @property
    def wasted(self) -> int:
        """Drafted tokens thrown away after a rejection."""
        return self.drafted - (len(self.tokens) - self.corrected - self.bonus)


def _emitter(events: list, observe):
    if observe is None:
        return events.append

    def emit(e):
        events.append(e)
        observe(e)

    return emit


def accepted_prefix(judgements: Sequence[Judgement], n: int, accept: Accept) -> int:
    """How many of a block's ``n`` drafted tokens stand: the longest prefix the acceptance rule keeps."""
    j = 0
    while j < n and accept.accepts(judgements[j].rank, judgements[j].prob):
        j += 1
    return j


def bonus_earned(policy: Policy, last_is_eos: bool, committed: int, n: int) -> bool:
    """Whether a fully accepted block of ``n`` tokens also takes the verifier's next top-1 for free: the policy
    allows it, the block did not end the caption, and the caption has room for one more token."""
    return bool(policy.bonus and not last_is_eos and committed + n < policy.max_new_tokens)


def committed_tokens(block: Sequence[int], accepted: int, top1: Callable[[int], int], bonus: bool) -> list[int]:
    """What both sides commit after a verified block: the accepted prefix, then the correction (the verifier's
    top-1 at the first rejected position) or, for a fully accepted block, the bonus token if earned.

    ``top1(i)`` is the verifier's top-1 at block position ``i``; only the one position the rule needs is
    asked for (a replayed trie records judgements up to the first rejection, not beyond). The one
    statement of the rule: the engine, the live service (its KV cache) and the live client (what it
    believes the cloud holds) all call it, so they cannot drift apart."""
    n = len(block)
    if accepted < n:
        return list(block[:accepted]) + [top1(accepted)]
    return list(block) + ([top1(n)] if bonus else [])


def run(session: Session, policy: Policy, observe=None) -> Run:
    """Decode one utterance under ``policy``. May raise :class:`CoverageMiss` from the session.

    ``observe``, if given, is called with each event as it happens: a live client timestamps
    them (this function itself never reads a clock)."""
    if policy.k == 0:
        return _run_cloud(session, policy, observe)
    gate = policy.gate
    if gate is None:
        raise ValueError("policy has no gate object; build it with sectrace.gates.parse_gate")
    if isinstance(gate, SessionGate):  # the oracle: bound to this utterance's session
        session, gate = gate.bind_session(session, policy)
    accept = policy.accept
    mode = policy.verifier_mode
    max_new = policy.max_new_tokens
    stop_lp = math.log(policy.adaptive) if policy.adaptive is not None else None
    out = Run()
    emit = _emitter(out.events, observe)
    tokens = out.tokens
    emit(Prefill())
    state = session.root
    unsent = 0  # committed on the edge, not yet seen by the cloud
    pending = 0  # known to the cloud but not yet in its cache
    first = True
    while len(tokens) < max_new:
        budget = min(policy.k, max_new - len(tokens))
        drafts: list[DraftToken] = []
        s = state
        while True:
            d = session.draft(s)
            emit(Draft(len(tokens) + len(drafts)))
            drafts.append(d)
            if d.eos or len(drafts) == budget or (stop_lp is not None and d.logprob < stop_lp):
                break
            s = session.advance(s, d.token)
        n = len(drafts)
        out.drafted += n
        out.blocks += 1
        block_toks = tuple(d.token for d in drafts)
        block = Block(
            tokens=block_toks,
            logprobs=tuple(d.logprob for d in drafts),
            entropies=tuple(d.entropy for d in drafts),
            margins=tuple(d.margin for d in drafts),
            start=len(tokens),
            extras=tuple(d.extra or {} for d in drafts),
        )
        emit(GateCall(n))
        judgements = None
        if gate.escalate(block):
            try:
                judgements = session.judge(state, block_toks, mode)
            except CloudUnavailable as exc:
                emit(Fallback(n, len(tokens), str(exc)))
                out.fallbacks += 1
        if judgements is None:
            new = list(block_toks)
            ended = drafts[-1].eos
            unsent += n
        else:
            j = accepted_prefix(judgements, n, accept)
            bonus = int(j == n and bonus_earned(policy, drafts[-1].eos, len(tokens), n))
            corrected = int(j < n)
            new = committed_tokens(block_toks, j, lambda i: judgements[i].top1, bool(bonus))
            ended = judgements[j].top1_eos if (corrected or bonus) else drafts[-1].eos
            emit(Verify(n, len(tokens), unsent, pending + unsent, first, j, corrected, bonus))
            first = False
            out.escalations += 1
            out.verified += n
            out.accepted += j
            out.corrected += corrected
            out.bonus += bonus
            unsent = 0
            pending = corrected + bonus
        tokens.extend(new)
        emit(Commit(len(new), len(tokens)))
        if ended:
            out.eos = True
            break
        if len(tokens) >= max_new:
            break
        for t in new:
            state = session.advance(state, t)
    return out


def _run_cloud(session: Session, policy: Policy, observe=None) -> Run:
    """k = 0: nothing is drafted, every token is the verifier's bonus token (cloud-only decoding).

    If the cloud stops answering, the edge drafter writes the rest of the caption (a Fallback event)."""
    out = Run(escalations=1)  # one cloud request, streamed
    emit = _emitter(out.events, observe)
    emit(CloudStart())
    state = session.root
    mode = policy.verifier_mode
    cloud = True
    while len(out.tokens) < policy.max_new_tokens:
        if cloud:
            try:
                jg = session.judge(state, (), mode)[0]
                tok, eos = jg.top1, jg.top1_eos
                emit(CloudStep(len(out.tokens)))
                out.bonus += 1
            except CloudUnavailable as exc:
                emit(Fallback(0, len(out.tokens), str(exc)))
                out.fallbacks += 1
                cloud = False
                emit(Prefill())  # the edge has not run the prompt yet
        if not cloud:
            d = session.draft(state)
            emit(Draft(len(out.tokens)))
            tok, eos = d.token, d.eos
            out.drafted += 1
        out.tokens.append(tok)
        emit(Commit(1, len(out.tokens)))
        if eos:
            out.eos = True
            break
        if len(out.tokens) >= policy.max_new_tokens:
            break
        state = session.advance(state, tok)
    return out
