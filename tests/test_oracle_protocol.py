"""Hand-computed oracles: the protocol on a world small enough to replay on paper (tests/hand_world.py).

Every expected caption and counter below was worked out by hand from the table in hand_world.py,
not by running the code. Thresholds sit exactly on the world's values (rank exactly R and R+1,
probability exactly P, gate signals exactly T), so an off-by-one comparison (< for <=, >= for >)
changes a caption. Each case runs twice: live on the hand session, and replayed from the same
world written as a trace and read back (float32 columns), which must agree.
"""

from __future__ import annotations

import pytest
from hand_world import EOS, HandSession, hand_trace

from sectrace.gates import parse_gate
from sectrace.protocol import Accept, Block, Commit, Draft, GateCall, Policy, Prefill, Verify, run
from sectrace.simulate import Replayer
from sectrace.simulate.replay import runs_frame

COUNTERS = ("drafted", "blocks", "escalations", "verified", "accepted", "corrected", "bonus", "eos")


def _pol(accept="rank:3", k=3, gate="always", bonus=True, max_new=6):
    return Policy(k=k, gate=parse_gate(gate), gate_spec=gate, accept=Accept.parse(accept), bonus=bonus,
                  privacy="features", max_new_tokens=max_new)


# (id, policy, tokens, (drafted, blocks, escalations, verified, accepted, corrected, bonus, eos))
CASES = [
    # Block 1 drafts 1 2 3. Token 2 has verifier rank 3, so top1 and rank:2 reject it: correction 7.
    # Block 2 from (1 7) drafts 5 EOS (EOS last in the block), both rank 1: accepted, no bonus after EOS.
    ("top1", _pol("top1"), [1, 7, 5, EOS], (5, 2, 2, 5, 3, 1, 0, True)),
    ("rank2", _pol("rank:2"), [1, 7, 5, EOS], (5, 2, 2, 5, 3, 1, 0, True)),
    # rank:3 accepts token 2 (rank exactly 3) and rejects token 3 (rank 4 = R+1): correction 8.
    # Block 2 from (1 2 8) drafts EOS as its first token: a one-token block, accepted.
    ("rank3", _pol("rank:3"), [1, 2, 8, EOS], (4, 2, 2, 4, 3, 1, 0, True)),
    # rank:4 accepts the whole block; bonus = the verifier's top-1 after (1 2 3) = 9; then EOS first.
    ("rank4", _pol("rank:4"), [1, 2, 3, 9, EOS], (4, 2, 2, 4, 4, 0, 1, True)),
    # ... without the bonus the next block starts at (1 2 3): 4 (rank 2) EOS, all accepted.
    ("rank4-nobonus", _pol("rank:4", bonus=False), [1, 2, 3, 4, EOS], (5, 2, 2, 5, 5, 0, 0, True)),
    # prob:P accepts probability >= P: token 2 has exactly 0.25, token 3 has 0.125.
    ("prob0.25", _pol("prob:0.25"), [1, 2, 8, EOS], (4, 2, 2, 4, 3, 1, 0, True)),
    ("prob0.375", _pol("prob:0.375"), [1, 7, 5, EOS], (5, 2, 2, 5, 3, 1, 0, True)),
    ("prob0.125", _pol("prob:0.125"), [1, 2, 3, 9, EOS], (4, 2, 2, 4, 4, 0, 1, True)),
    # k=1: each accepted token earns a bonus: 1 +7, then 5 + EOS (the bonus token is EOS: the caption ends).
    ("k1-rank3", _pol("rank:3", k=1), [1, 7, 5, EOS], (2, 2, 2, 2, 2, 0, 2, True)),
    # k=1 without bonus: 1 ok; 2 rejected -> 7; 5 ok; EOS ok.
    ("k1-top1-nobonus", _pol("top1", k=1, bonus=False), [1, 7, 5, EOS], (4, 4, 4, 4, 3, 1, 0, True)),
    # max_new_tokens inside a block: the block is cut to the budget, no bonus past the cap, no EOS.
    ("cap1", _pol("top1", max_new=1), [1], (1, 1, 1, 1, 1, 0, 0, False)),
    ("cap2", _pol("rank:4", max_new=2), [1, 2], (2, 1, 1, 2, 2, 0, 0, False)),
    ("cap3", _pol("rank:4", max_new=3), [1, 2, 3], (3, 1, 1, 3, 3, 0, 0, False)),
    ("cap4-bonus", _pol("rank:4", max_new=4), [1, 2, 3, 9], (3, 1, 1, 3, 3, 0, 1, False)),
    # cap 4 after a correction at 3 tokens: the next block has a budget of one token (EOS).
    ("cap4-rank3", _pol("rank:3", max_new=4), [1, 2, 8, EOS], (4, 2, 2, 4, 3, 1, 0, True)),
    # Gates on block 1 (entropies 0.5 1.5 0.25, margins 0.5 0.75 0.25, logprobs -0.25 -1.5 -0.5); every
    # later block has entropy 0.5, margin 0.5, logprob -0.25 and is never escalated.
    # At the threshold: not risky, nothing escalates, the drafter's caption 1 2 3 4 EOS stands.
    ("entropy-at-T", _pol(gate="entropy:1.5"), [1, 2, 3, 4, EOS], (5, 2, 0, 0, 0, 0, 0, True)),
    ("margin-at-T", _pol(gate="margin:0.25"), [1, 2, 3, 4, EOS], (5, 2, 0, 0, 0, 0, 0, True)),
    ("logprob-at-T", _pol(gate="logprob:-1.5"), [1, 2, 3, 4, EOS], (5, 2, 0, 0, 0, 0, 0, True)),
    # Just on the risky side: block 1 escalates (rank:3 -> 1 2 8), block 2 (EOS) does not.
    ("entropy-past-T", _pol(gate="entropy:1.25"), [1, 2, 8, EOS], (4, 2, 1, 3, 2, 1, 0, True)),
    ("margin-past-T", _pol(gate="margin:0.375"), [1, 2, 8, EOS], (4, 2, 1, 3, 2, 1, 0, True)),
    ("logprob-past-T", _pol(gate="logprob:-1.25"), [1, 2, 8, EOS], (4, 2, 1, 3, 2, 1, 0, True)),
]
IDS = [c[0] for c in CASES]


@pytest.fixture(scope="module")
def replayer(tmp_path_factory):
    tr = hand_trace(tmp_path_factory.mktemp("hand") / "hand", [c[1] for c in CASES])
    return Replayer(tr)


def _counts(r):
    return (r.drafted, r.blocks, r.escalations, r.verified, r.accepted, r.corrected, r.bonus, r.eos)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_live_run_matches_the_hand_computation(case):
    _, pol, tokens, counts = case
    r = run(HandSession(), pol)
    assert r.tokens == tokens
    assert _counts(r) == counts
    # wasted = drafted tokens not committed as drafted
    assert r.wasted == r.drafted - (len(tokens) - r.corrected - r.bonus)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_trace_replay_matches_the_hand_computation(replayer, case):
    _, pol, tokens, counts = case
    rep = replayer.replay(pol)
    (r,) = rep.runs
    assert r is not None, rep.misses
    assert r.tokens == tokens
    assert _counts(r) == counts
    assert r.events == run(HandSession(), pol).events
    row = runs_frame(rep).row(0, named=True)
    assert (row["drafted"], row["escalations"], row["accepted"], row["corrected"], row["bonus_tokens"]) == (
        counts[0], counts[2], counts[4], counts[5], counts[6])


def test_schedules_by_hand():
    """The full ordered schedule of two cases, written out event by event."""
    r = run(HandSession(), _pol("rank:3"))
    assert r.events == [
        Prefill(), Draft(0), Draft(1), Draft(2), GateCall(3),
        Verify(n=3, ctx=0, unsent=0, pending=0, first=True, accepted=2, corrected=1, bonus=0), Commit(3, 3),
        Draft(3), GateCall(1),
        # the correction 8 is known to the cloud but not in its cache yet: pending 1
        Verify(n=1, ctx=3, unsent=0, pending=1, first=False, accepted=1, corrected=0, bonus=0), Commit(1, 4),
    ]
    r = run(HandSession(), _pol(gate="entropy:1.25"))
    assert r.events == [
        Prefill(), Draft(0), Draft(1), Draft(2), GateCall(3),
        Verify(n=3, ctx=0, unsent=0, pending=0, first=True, accepted=2, corrected=1, bonus=0), Commit(3, 3),
        Draft(3), GateCall(1), Commit(1, 4),
    ]
    r = run(HandSession(), _pol("rank:3", k=1))
    assert r.events == [
        Prefill(), Draft(0), GateCall(1),
        Verify(n=1, ctx=0, unsent=0, pending=0, first=True, accepted=1, corrected=0, bonus=1), Commit(2, 2),
        Draft(2), GateCall(1),
        Verify(n=1, ctx=2, unsent=0, pending=1, first=False, accepted=1, corrected=0, bonus=1), Commit(2, 4),
    ]


@pytest.mark.parametrize("rule,rank,prob,ok", [
    ("top1", 1, 0.01, True), ("top1", 2, 0.99, False),
    ("rank:3", 3, 0.0, True), ("rank:3", 4, 1.0, False), ("rank:1", 1, 0.0, True), ("rank:1", 2, 1.0, False),
    ("prob:0.25", 99, 0.25, True), ("prob:0.25", 1, 0.2499999, False),
])
def test_acceptance_rules_at_their_boundary(rule, rank, prob, ok):
    assert Accept.parse(rule).accepts(rank, prob) is ok


def _block(entropy=0.5, margin=0.5, logprob=-0.25):
    return Block((4,), (logprob,), (entropy,), (margin,), 0)


@pytest.mark.parametrize("spec,block,escalates", [
    ("entropy:1.5", _block(entropy=1.5), False), ("entropy:1.5", _block(entropy=1.5000001), True),
    ("entropy-mean:1.5", _block(entropy=1.5), False), ("entropy-mean:1.5", _block(entropy=1.5000001), True),
    ("margin:0.25", _block(margin=0.25), False), ("margin:0.25", _block(margin=0.2499999), True),
    ("logprob:-1.5", _block(logprob=-1.5), False), ("logprob:-1.5", _block(logprob=-1.5000001), True),
])
def test_gates_at_their_threshold(spec, block, escalates):
    """A gate escalates strictly past its threshold (entropy above, margin and logprob below), never at it."""
    assert parse_gate(spec).escalate(block) is escalates
