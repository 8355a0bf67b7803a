"""The protocol's invariants: lossless, edge-only, Leviathan's expectation, replay equals live."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sectrace.explore.synth import AlphaModel, AlphaSource
from sectrace.gates import RandomGate, parse_gate
from sectrace.protocol import Accept, Always, Block, Never, Policy, Verify, cloud_only, drafter_only, lossless, run
from sectrace.simulate import Replayer
from sectrace.trace import TrieRecorder, TrieSession


def _greedy(source, mode, max_new):
    """The verifier's own greedy decoding, computed without the protocol."""
    prefix, out = (), []
    while len(out) < max_new:
        jg = source.judge(prefix, (), mode)[0]
        out.append(jg.top1)
        if jg.top1_eos:
            break
        prefix += (jg.top1,)
    return out


def _drafter_greedy(source, max_new):
    prefix, out = (), []
    while len(out) < max_new:
        d = source.draft(prefix)
        out.append(d.token)
        if d.eos:
            break
        prefix += (d.token,)
    return out


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("privacy,mode", [("features", "audio"), ("token-only", "blind")])
def test_lossless_equals_verifier_greedy_live(k, privacy, mode):
    for utt in range(8):
        src = AlphaSource(AlphaModel(seed=11), utt)
        r = run(src, lossless(k, max_new_tokens=40, privacy=privacy))
        assert r.tokens == _greedy(src, mode, 40)
        assert r.escalations == r.blocks  # always-escalate


@pytest.mark.parametrize("k", [1, 3, 5, 8])
def test_lossless_replay_equals_cloud_only(small_trace, k):
    rp = Replayer(small_trace)
    cloud = rp.replay(cloud_only(48))
    rep = rp.replay(lossless(k, 48))
    assert all(r is not None for r in rep.runs), "default exploration covers lossless k in 1,3,5,8"
    for a, b in zip(rep.runs, cloud.runs):
        assert a.tokens == b.tokens


@pytest.mark.parametrize("k", [1, 3, 5, 8])
def test_never_escalate_equals_drafter_greedy(k):
    for utt in range(8):
        src = AlphaSource(AlphaModel(seed=5), utt)
        pol = Policy(k=k, gate=Never(), gate_spec="never", max_new_tokens=40)
        r = run(src, pol)
        assert r.tokens == _drafter_greedy(src, 40)
        assert r.escalations == 0 and r.wasted == 0


@pytest.mark.parametrize("alpha", [0.5, 0.8])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_leviathan_expected_tokens_per_call(alpha, k):
    """On the pure α-model, tokens committed per verification call average (1 − α^(k+1)) / (1 − α)."""
    model = AlphaModel(alpha=alpha, alpha_blind=alpha, coupling=0.0, mean_length=10_000, seed=7)
    per_call = []
    for utt in range(40):
        r = run(AlphaSource(model, utt), lossless(k, max_new_tokens=300))
        for ev, nxt in zip(r.events, r.events[1:]):
            if isinstance(ev, Verify) and ev.n == k:
                per_call.append(nxt.n)  # the Commit right after the call
    x = np.array(per_call, dtype=float)
    expected = (1 - alpha ** (k + 1)) / (1 - alpha)
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert len(x) > 1000
    assert abs(x.mean() - expected) < 4 * se + 1e-9, (x.mean(), expected, se)


def test_bonus_off_commits_at_most_k_per_call():
    src = AlphaSource(AlphaModel(alpha=0.9, coupling=0.0, mean_length=500, seed=1), 0)
    pol = Policy(k=4, gate=Always(), gate_spec="always", accept=Accept("top1", 1), bonus=False, max_new_tokens=120)
    r = run(src, pol)
    assert r.bonus == 0
    commits = [e for e in r.events if type(e).__name__ == "Commit"]
    assert max(c.n for c in commits) <= 4


def test_adaptive_stops_blocks_early():
    src = AlphaSource(AlphaModel(seed=2), 0)
    fixed = run(src, Policy(k=8, gate=Never(), gate_spec="never", max_new_tokens=40))
    adaptive = run(src, Policy(k=8, gate=Never(), gate_spec="never", max_new_tokens=40, adaptive=0.6))
    assert adaptive.tokens == fixed.tokens  # stopping early never changes the drafter's own path
    assert adaptive.blocks > fixed.blocks


# --- property-based: random models, random policies ----------------------------------
policies = st.builds(
    lambda k, accept, gate_p, bonus, privacy, cache, adaptive, max_new: Policy(
        k=k, gate=RandomGate(gate_p, seed=1), gate_spec=f"random:{gate_p}", accept=accept, bonus=bonus,
        privacy=privacy, cloud_cache=cache, adaptive=adaptive, max_new_tokens=max_new),
    k=st.integers(1, 8),
    accept=st.one_of(st.just(Accept("top1", 1)), st.integers(1, 30).map(lambda r: Accept("rank", r)),
                     st.floats(0.0, 1.0, exclude_min=True).map(lambda p: Accept("prob", p))),
    gate_p=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
    bonus=st.booleans(),
    privacy=st.sampled_from(["token-only", "features"]),
    cache=st.sampled_from(["stateful", "stateless"]),
    adaptive=st.one_of(st.none(), st.floats(0.05, 0.95)),
    max_new=st.integers(1, 40),
)
models = st.builds(AlphaModel, alpha=st.floats(0.05, 0.95), alpha_blind=st.just(0.05),
                   coupling=st.floats(0.0, 1.0), mean_length=st.floats(2.0, 30.0), seed=st.integers(0, 10**6))


@settings(max_examples=60, deadline=None)
@given(model=models, pols=st.lists(policies, min_size=1, max_size=4), utt=st.integers(0, 50))
def test_replay_from_trie_equals_live(model, pols, utt):
    """Record live runs in a trie, write them as rows, replay: identical tokens and events, no misses."""
    src = AlphaSource(model, utt)
    rec = TrieRecorder(src, ("audio", "blind"))
    live = [run(rec, p) for p in pols]
    sess = TrieSession(rec.frames("u"), ("audio", "blind"))
    for p, lv in zip(pols, live):
        rp = run(sess, p)
        assert rp.tokens == lv.tokens
        assert rp.events == lv.events


@settings(max_examples=60, deadline=None)
@given(model=models, pol=policies, utt=st.integers(0, 50))
def test_run_invariants(model, pol, utt):
    src = AlphaSource(model, utt)
    r = run(src, pol)
    assert 1 <= len(r.tokens) <= pol.max_new_tokens
    assert r.accepted <= r.verified <= r.drafted
    assert r.escalations <= r.blocks
    assert r.corrected <= r.escalations and r.bonus <= r.escalations
    assert len(r.tokens) == r.drafted - r.wasted + r.corrected + r.bonus
    assert r.wasted >= 0
    if not pol.bonus:
        assert r.bonus == 0
    # Every committed token is the drafter's or the verifier's choice at its state: the trie property.
    mode = pol.verifier_mode
    prefix = ()
    for t in r.tokens:
        d = src.draft(prefix)
        v = src.judge(prefix, (), mode)[0]
        assert t in (d.token, v.top1)
        prefix += (t,)
    # The end is reached by an EOS token or the length cap, nothing else.
    assert r.eos or len(r.tokens) == pol.max_new_tokens


def test_gate_sees_only_the_block():
    seen = []

    class Spy:
        def escalate(self, block: Block) -> bool:
            seen.append(block)
            return False

    src = AlphaSource(AlphaModel(seed=4), 1)
    run(src, Policy(k=3, gate=Spy(), gate_spec="spy", max_new_tokens=20))
    assert seen and all(1 <= len(b.tokens) <= 3 for b in seen)
    assert seen[0].start == 0 and all(b.start == a.start + len(a.tokens) for a, b in zip(seen, seen[1:]))


def test_edge_only_policy_is_never_and_k1():
    pol = drafter_only(10)
    assert pol.k == 1 and isinstance(pol.gate, Never)
    assert parse_gate("never") == Never()


class _CountingSession:
    """A hand-written session: the state is the number of tokens written so far; the cloud writes 100 + state,
    the drafter 200 + state. The cloud answers ``cloud_calls`` times, then raises CloudUnavailable; token
    ``eos_at`` (either side's) ends the caption."""

    root = 0

    def __init__(self, cloud_calls: int = 10**9, eos_at: int = -1):
        self.cloud_calls, self.eos_at, self.calls, self.advances = cloud_calls, eos_at, 0, 0

    def draft(self, state):
        from sectrace.protocol.engine import DraftToken
        return DraftToken(200 + state, -0.1, 0.5, 0.9, state == self.eos_at)

    def advance(self, state, token):
        self.advances += 1
        return state + 1

    def judge(self, state, tokens, mode):
        from sectrace.protocol.engine import CloudUnavailable, Judgement
        self.calls += 1
        if self.calls > self.cloud_calls:
            raise CloudUnavailable("down")
        return [Judgement(0, float("nan"), 100 + state, 0.9, state == self.eos_at)]


def test_cloud_only_schedule_and_counters_by_hand():
    """k = 0 streams one cloud request: one CloudStep and one Commit per token, every token a bonus."""
    from sectrace.protocol.engine import CloudStart, CloudStep, Commit
    seen, sess = [], _CountingSession()
    r = run(sess, cloud_only(max_new_tokens=3), observe=seen.append)
    assert sess.advances == 2  # no state is built past the last token (a trie may not have it)
    assert r.tokens == [100, 101, 102]
    assert r.events == [CloudStart(), CloudStep(0), Commit(1, 1), CloudStep(1), Commit(1, 2), CloudStep(2), Commit(1, 3)]
    assert seen == r.events
    assert (r.escalations, r.bonus, r.drafted, r.fallbacks, r.eos) == (1, 3, 0, 0, False)


def test_cloud_only_stops_at_the_clouds_eos():
    r = run(_CountingSession(eos_at=1), cloud_only(max_new_tokens=8))
    assert r.tokens == [100, 101] and r.eos and r.bonus == 2


def test_cloud_only_falls_back_to_the_drafter_when_the_cloud_stops_answering():
    """After two answered steps the cloud fails: one Fallback(0, ...), the edge prefills, then drafts the rest."""
    from sectrace.protocol.engine import CloudStart, CloudStep, Commit, Draft, Fallback, Prefill
    sess = _CountingSession(cloud_calls=2)
    r = run(sess, cloud_only(max_new_tokens=4))
    assert r.tokens == [100, 101, 202, 203]
    assert r.events == [CloudStart(), CloudStep(0), Commit(1, 1), CloudStep(1), Commit(1, 2),
                        Fallback(0, 2, "down"), Prefill(), Draft(2), Commit(1, 3), Draft(3), Commit(1, 4)]
    assert (r.escalations, r.bonus, r.drafted, r.fallbacks, r.eos) == (1, 2, 2, 1, False)
    assert sess.calls == 3  # the cloud is not asked again after it failed
    r = run(_CountingSession(cloud_calls=1, eos_at=2), cloud_only(max_new_tokens=9))
    assert r.tokens == [100, 201, 202] and r.eos and r.drafted == 2


def test_coverage_miss_names_what_and_where():
    from sectrace.protocol.engine import CoverageMiss
    e = CoverageMiss(3, "judge")
    assert (e.depth, e.what, str(e)) == (3, "judge", "judge at depth 3")


@pytest.mark.parametrize("text,kind,value", [
    ("top1", "top1", 1), (" Exact ", "top1", 1), ("TOP-1", "top1", 1),
    ("rank:20", "rank", 20), ("rank:3.0", "rank", 3), ("prob:0.1", "prob", 0.1), ("prob:1", "prob", 1.0),
])
def test_accept_parse_reads_every_spelling(text, kind, value):
    a = Accept.parse(text)
    assert a == Accept(kind, value) and a.kind == kind and a.value == value
    assert type(a.value) is (int if kind == "top1" or (kind == "rank" and value == int(value)) else float)


def test_accept_parse_prints_back_and_refuses_with_one_sentence():
    from sectrace.protocol.policy import PolicyError
    assert [str(Accept.parse(t)) for t in ("exact", "rank:20", "prob:0.25")] == ["top1", "rank:20", "prob:0.25"]
    for bad in ("rank", "rank:", "foo:1", "prob0.1"):
        with pytest.raises(PolicyError, match="cannot read acceptance rule .*write top1, rank:20 or prob:0.1"):
            Accept.parse(bad)
    for bad in ("rank:x", "rank:1:2"):  # the first colon splits kind from number
        with pytest.raises(PolicyError, match="cannot read the number in acceptance rule"):
            Accept.parse(bad)


def test_baseline_policies_by_field():
    """The baselines' fields are what reports label and the simulator prices: write them all down."""
    d, c, ll = drafter_only(32), cloud_only(40), lossless(3)
    assert (d.k, d.gate_spec, d.max_new_tokens, d.name, d.label, d.bonus) == (1, "never", 32, "edge-only", "edge-only", True)
    assert isinstance(d.gate, Never) and d.accept == Accept("rank", 20) and d.privacy == "token-only"
    assert (c.k, c.gate_spec, c.accept, c.bonus, c.privacy, c.max_new_tokens, c.name, c.label) == (
        0, "always", Accept("top1", 1), True, "raw", 40, "cloud-only", "cloud-only")
    assert isinstance(c.gate, Always)
    assert (ll.k, ll.gate_spec, ll.accept, ll.privacy, ll.max_new_tokens, ll.name) == (
        3, "always", Accept("top1", 1), "features", 64, "")
    assert ll.label == "k=3 gate=always accept=top1 features" and isinstance(ll.gate, Always)


def test_a_policy_without_a_gate_object_is_refused():
    with pytest.raises(ValueError, match="^policy has no gate object; build it with sectrace.gates.parse_gate$"):
        run(_CountingSession(), Policy(k=2, gate=None))


def test_policy_label_names_every_non_default_field():
    p = Policy(k=4, gate=Always(), gate_spec="entropy:2", accept=Accept("prob", 0.25), adaptive=0.3, bonus=False,
               privacy="features", cloud_cache="stateless")
    assert p.label == "k=4 gate=entropy:2 accept=prob:0.25 adaptive=0.3 no-bonus features stateless"
    assert Policy(k=2, gate=Always()).label == "k=2 gate=always accept=rank:20 token-only"
    assert Policy(k=2, gate=Always(), name="mine").label == "mine"


@pytest.mark.parametrize("kw,msg", [
    ({"k": -1}, "block size k=-1 must be >= 0"),
    ({"privacy": "nope"}, "unknown privacy mode 'nope'; use one of token-only, features, raw"),
    ({"cloud_cache": "warm"}, "unknown cloud cache 'warm'; use stateful or stateless"),
    ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
    ({"adaptive": 1.0}, "adaptive threshold 1.0 must be a probability in (0, 1)"),
    ({"adaptive": 0.0}, "adaptive threshold 0.0 must be a probability in (0, 1)"),
    ({"k": 0, "bonus": False}, "k=0 (cloud decoding) needs the bonus token on"),
])
def test_policy_refuses_with_one_sentence(kw, msg):
    from sectrace.protocol.policy import PolicyError
    with pytest.raises(PolicyError) as e:
        Policy(**kw)
    assert str(e.value).startswith(msg)


def test_policy_accepts_its_boundaries():
    for kw in ({"k": 0}, {"max_new_tokens": 1}, {"adaptive": 0.5}):
        assert Policy(**kw)  # no error


@pytest.mark.parametrize("kind,value,msg", [
    ("bogus", 1, "unknown acceptance rule 'bogus'; use top1, rank:R or prob:P"),
    ("rank", float("nan"), "rank:nan needs a finite number, e.g. rank:20 or prob:0.1"),
    ("prob", float("inf"), "prob:inf needs a finite number, e.g. rank:20 or prob:0.1"),
    ("rank", 0, "rank:0 needs a whole number R >= 1, e.g. rank:20"),
    ("rank", 2.5, "rank:2.5 needs a whole number R >= 1, e.g. rank:20"),
    ("prob", 0.0, "prob:0 needs a probability above 0 and at most 1, e.g. prob:0.1"),
    ("prob", 1.5, "prob:1.5 needs a probability above 0 and at most 1, e.g. prob:0.1"),
])
def test_accept_refuses_with_one_sentence(kind, value, msg):
    from sectrace.protocol.policy import PolicyError
    with pytest.raises(PolicyError) as e:
        Accept(kind, value)
    assert str(e.value) == msg


def test_accept_and_verifier_mode_at_their_boundaries():
    for kind, value in (("rank", 1), ("rank", 2.0), ("prob", 1.0), ("prob", 1e-9), ("top1", 1)):
        assert Accept(kind, value).value == value  # no error
    assert [Policy(privacy=p).verifier_mode for p in ("token-only", "features", "raw")] == ["blind", "audio", "audio"]
    assert Always().escalate(None) is True and Never().escalate(None) is False


def test_a_session_gate_is_bound_to_the_session_before_decoding():
    """run() decodes with the session and the gate that bind_session returns (the oracle's replay binding)."""
    from sectrace.protocol import SessionGate

    orig, bound_sess = _CountingSession(), _CountingSession(eos_at=2)
    asked = []

    class Binding:
        def escalate(self, block):
            raise AssertionError("the unbound gate must not be asked")

        def bind_session(self, session, policy):
            asked.append((session, policy))
            return bound_sess, Never()

    g = Binding()
    assert isinstance(g, SessionGate)
    pol = Policy(k=2, gate=g, gate_spec="bound", max_new_tokens=8)
    r = run(orig, pol)
    assert asked == [(orig, pol)]
    assert r.tokens == [200, 201, 202] and r.escalations == 0  # the bound session's drafts, ended by its EOS at 2
    assert orig.advances == 0 and bound_sess.advances > 0


def test_baselines_default_to_64_tokens_and_pass_the_length_on():
    assert drafter_only().max_new_tokens == cloud_only().max_new_tokens == lossless(2).max_new_tokens == 64
    assert lossless(2, max_new_tokens=10).max_new_tokens == 10


class _AgreeingSession:
    """A hand-written session for blocks: the state is the number of tokens written; the drafter writes 200 + state
    (log-prob ``lp``, extra signals {"x": state} on odd states only) and the verifier agrees at every position.
    Cloud calls numbered in ``down`` raise CloudUnavailable; the drafter's token at ``eos_at`` ends the caption."""

    root = 0

    def __init__(self, down=(), eos_at=-1, lp=-0.1):
        self.down, self.eos_at, self.lp, self.calls, self.advances = set(down), eos_at, lp, 0, 0

    def draft(self, state):
        from sectrace.protocol.engine import DraftToken
        return DraftToken(200 + state, self.lp, 0.5, 0.9, state == self.eos_at, {"x": state} if state % 2 else None)

    def advance(self, state, token):
        self.advances += 1
        return state + 1

    def judge(self, state, tokens, mode):
        from sectrace.protocol.engine import CloudUnavailable, Judgement
        self.calls += 1
        if self.calls in self.down:
            raise CloudUnavailable("link down")
        return [Judgement(1, 0.9, 200 + state + i, 0.9, state + i == self.eos_at) for i in range(len(tokens) + 1)]


def test_blocks_fall_back_to_the_drafter_while_the_cloud_is_down_by_hand():
    """k = 2, cloud calls 2 and 3 fail: those blocks commit as drafted (Fallback events, counted, their tokens
    unsent), and the next verify carries the four unsent tokens plus the first call's pending bonus token."""
    from sectrace.protocol import Commit, Draft, Fallback, GateCall, Prefill
    seen, sess = [], _AgreeingSession(down=(2, 3))
    r = run(sess, Policy(k=2, gate=Always(), accept=Accept("top1", 1), max_new_tokens=9), observe=seen.append)
    assert r.events == [
        Prefill(), Draft(0), Draft(1), GateCall(2),
        Verify(n=2, ctx=0, unsent=0, pending=0, first=True, accepted=2, corrected=0, bonus=1), Commit(3, 3),
        Draft(3), Draft(4), GateCall(2), Fallback(2, 3, "link down"), Commit(2, 5),
        Draft(5), Draft(6), GateCall(2), Fallback(2, 5, "link down"), Commit(2, 7),
        Draft(7), Draft(8), GateCall(2),
        Verify(n=2, ctx=7, unsent=4, pending=5, first=False, accepted=2, corrected=0, bonus=0), Commit(2, 9),
    ]
    assert seen == r.events
    assert r.tokens == list(range(200, 209))
    assert (r.fallbacks, r.escalations, r.drafted, r.bonus) == (2, 2, 8, 1)
    # one advance inside each block of two, then one per committed token, none after the last commit
    assert sess.advances == 4 + 3 + 2 + 2


def test_a_block_ends_at_the_drafted_eos_and_at_the_adaptive_threshold():
    from sectrace.protocol import GateCall
    r = run(_AgreeingSession(eos_at=1), Policy(k=4, gate=Never(), gate_spec="never", max_new_tokens=9))
    assert [e for e in r.events if isinstance(e, GateCall)] == [GateCall(2)] and r.tokens == [200, 201] and r.eos
    # adaptive 0.5 stops a block after a token the drafter gives less than 0.5; exactly 0.5 is not less
    at = run(_AgreeingSession(lp=math.log(0.5)), Policy(k=3, gate=Never(), max_new_tokens=6, adaptive=0.5))
    assert [e.n for e in at.events if isinstance(e, GateCall)] == [3, 3]
    below = run(_AgreeingSession(lp=math.log(0.49)), Policy(k=3, gate=Never(), max_new_tokens=3, adaptive=0.5))
    assert [e.n for e in below.events if isinstance(e, GateCall)] == [1, 1, 1]


def test_the_gate_sees_each_drafted_tokens_extra_signals():
    blocks = []

    class Look:
        def escalate(self, block):
            blocks.append(block)
            return False

    run(_AgreeingSession(), Policy(k=3, gate=Look(), max_new_tokens=6))
    assert [b.extras for b in blocks] == [({}, {"x": 1}, {}), ({"x": 3}, {}, {"x": 5})]
    assert [(b.tokens, b.start, b.logprobs, b.entropies, b.margins) for b in blocks] == [
        ((200, 201, 202), 0, (-0.1,) * 3, (0.5,) * 3, (0.9,) * 3), ((203, 204, 205), 3, (-0.1,) * 3, (0.5,) * 3, (0.9,) * 3)]
