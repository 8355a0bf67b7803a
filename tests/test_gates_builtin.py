"""Built-in gates: parsing, signals, content rules, combinations, the oracle and adaptive k."""

from __future__ import annotations

import math

import pytest
from conftest import synthetic_replayer, synthetic_sample, synthetic_trace  # noqa: E402

from sectrace.errors import UserError
from sectrace.explore.synth import AlphaModel, AlphaSource
from sectrace.gates import (
    AllGate,
    AnyGate,
    AudioShift,
    ContentGate,
    Margin,
    MaxEntropy,
    McDropout,
    MeanEntropy,
    MinLogProb,
    Oracle,
    RandomGate,
    Stability,
    parse_gate,
    split_top,
)
from sectrace.gates.content import token_flags
from sectrace.protocol import Accept, Block, Policy, run
from sectrace.simulate import Replayer
from sectrace.trace.trie import TrieRecorder

SAMPLE = synthetic_sample()


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace()


@pytest.fixture(scope="module")
def replayer():
    return synthetic_replayer()


def block(tokens=(5, 6), ent=(0.5, 0.5), lp=(-0.1, -0.1), mar=(0.8, 0.8), extras=None):
    return Block(tuple(tokens), tuple(lp), tuple(ent), tuple(mar), 0,
                 tuple(extras) if extras is not None else tuple({} for _ in tokens))


def test_parse_new_gates():
    assert parse_gate("stability:0.4") == Stability(0.4)
    assert parse_gate("audio:1.2") == AudioShift(1.2)
    assert isinstance(parse_gate("oracle"), Oracle)
    g = parse_gate("any(entropy:3, all(margin:0.1,logprob:-2))")
    assert isinstance(g, AnyGate) and isinstance(g.gates[1], AllGate) and g.gates[0] == MaxEntropy(3.0)
    assert split_top("entropy:2,any(a,b),margin:0.1") == ["entropy:2", "any(a,b)", "margin:0.1"]
    for bad in ("any(entropy:2", "bogus:1", "stability:x", "content:colours", "oracle:1", "any()"):
        with pytest.raises(UserError):
            parse_gate(bad)


def test_signal_gates_fire_and_fail_clearly():
    ex = ({"stability": 0.9, "audio_shift": 0.1}, {"stability": 0.2, "audio_shift": 1.5})
    b = block(extras=ex)
    assert Stability(0.5).escalate(b) and not Stability(0.1).escalate(b)
    assert AudioShift(1.0).escalate(b) and not AudioShift(2.0).escalate(b)
    with pytest.raises(UserError, match="x_stability"):
        Stability(0.5).escalate(block())
    with pytest.raises(UserError, match="x_audio_shift"):
        AudioShift(0.5).escalate(block())


def test_combinations():
    hot, cold = block(ent=(4.0, 0.1)), block(ent=(0.1, 0.1))
    g_any = AnyGate((MaxEntropy(3.0), MaxEntropy(10.0)))
    g_all = AllGate((MaxEntropy(3.0), MaxEntropy(10.0)))
    assert g_any.escalate(hot) and not g_any.escalate(cold)
    assert not g_all.escalate(hot)


def test_content_rules():
    pieces = {1: b" angry", 2: b" 2024", 3: b" March", 4: b" Alice", 5: b" The", 6: b" voice", 7: b" 3rd"}
    assert token_flags(pieces, ("emotion",)) == {1}
    assert token_flags(pieces, ("digits",)) == {2, 7}
    assert token_flags(pieces, ("dates",)) == {3, 7}
    assert token_flags(pieces, ("names",)) == {3, 4}  # a capitalised month reads as a name too
    g = ContentGate(("emotion",), frozenset({1}))
    assert g.escalate(block(tokens=(6, 1))) and not g.escalate(block(tokens=(6, 5)))


def test_content_needs_vocab(trace):
    with pytest.raises(UserError, match="token text"):
        parse_gate("content:emotion")
    g = parse_gate("content:emotion", trace)
    angry = trace.vocab["id"].to_list()[trace.vocab["piece"].to_list().index(b" angry")]
    assert angry in g.flagged and len(g.flagged) > 10


def test_sample_trace_carries_signals(trace):
    assert {"x_stability", "x_audio_shift"} <= set(trace.nodes.columns)


def test_signal_gate_on_trace_without_signal(trace, replayer):
    bare = Replayer(type(trace)(trace.manifest, trace.utterances, trace.nodes.drop("x_stability"),
                                trace.timings, trace.vocab, trace.path))
    pol = Policy(k=3, gate=Stability(0.5), gate_spec="stability:0.5")
    with pytest.raises(UserError, match="x_stability"):
        bare.replay(pol)


def test_oracle_is_lossless_with_fewest_calls(replayer):
    """Under top-1 acceptance the oracle's captions equal cloud-only, with fewer calls than always."""
    acc = Accept("top1", 1)
    oracle = replayer.replay(Policy(k=5, gate=Oracle(), gate_spec="oracle", accept=acc, privacy="features"))
    always = replayer.replay(Policy(k=5, gate=parse_gate("always"), gate_spec="always", accept=acc,
                                    privacy="features"))
    cloud = replayer.replay(Policy(k=0, gate=parse_gate("always"), gate_spec="always", accept=acc, privacy="raw"))
    n_cov = 0
    for o, a, c in zip(oracle.runs, always.runs, cloud.runs):
        if o is None:
            continue
        n_cov += 1
        assert o.tokens == c.tokens  # oracle output is the verifier's greedy caption
        assert o.escalations <= a.escalations
        assert o.corrected == o.escalations  # every escalated block is one the verifier changes
    assert n_cov >= 30


def test_oracle_outside_replay_fails_clearly():
    with pytest.raises(UserError, match="replaying"):
        Oracle().escalate(block())


def test_oracle_leaves_protocol_untouched():
    """The replay binding wraps the session; the state machine itself runs unchanged on a live source."""
    rec = TrieRecorder(AlphaSource(AlphaModel(seed=3), 0), ("audio", "blind"))
    from sectrace.gates.oracle import prepare_session

    pol = Policy(k=4, gate=Oracle(), gate_spec="oracle", accept=Accept("top1", 1), privacy="features")
    tap, bound = prepare_session(Oracle(), rec, pol)
    from dataclasses import replace

    r = run(tap, replace(pol, gate=bound))
    ref = run(rec, Policy(k=0, gate=parse_gate("always"), accept=Accept("top1", 1), privacy="raw"))
    assert r.tokens == ref.tokens and r.corrected == r.escalations


@pytest.mark.parametrize("thr", [0.3, 0.6])
def test_adaptive_k_stops_after_unlikely_token(thr):
    """Adaptive k: a block ends at k, at EOS, or right after a token the drafter gives < thr; never later."""
    from sectrace.gates.oracle import Tap
    from sectrace.protocol import GateCall

    rec = TrieRecorder(AlphaSource(AlphaModel(seed=1), 2), ("audio", "blind"))
    tap = Tap(rec)
    k = 8
    r = run(tap, Policy(k=k, gate=parse_gate("always"), accept=Accept("top1", 1), adaptive=thr))
    full = run(rec, Policy(k=k, gate=parse_gate("always"), accept=Accept("top1", 1)))
    assert r.tokens == full.tokens  # lossless either way
    assert r.drafted < full.drafted  # fewer wasted drafts
    lps = [rec.draft(s) for s in tap.draft_states]
    pos, early = 0, 0
    for n in (ev.n for ev in r.events if isinstance(ev, GateCall)):
        blk = lps[pos:pos + n]
        pos += n
        assert all(d.logprob >= math.log(thr) and not d.eos for d in blk[:-1])
        last = blk[-1]
        assert n == k or last.eos or last.logprob < math.log(thr) or pos == len(lps)
        early += n < k and not last.eos
    assert pos == len(lps) and early > 0


def test_adaptive_invalid():
    with pytest.raises(UserError):
        Policy(k=5, adaptive=1.5)


# --- each built-in gate's rule on hand-made blocks (what mutation testing found unpinned) ------------------
def test_block_gates_read_the_right_token_of_the_block():
    """max/min/mean over the block, not its first or last token: the risky token sits in the middle."""
    b = block(tokens=(1, 2, 3), ent=(0.2, 3.0, 0.4), lp=(-0.1, -4.0, -0.2), mar=(0.9, 0.05, 0.8))
    assert MaxEntropy(2.9).escalate(b) and not MaxEntropy(3.0).escalate(b)
    # mean entropy (0.2 + 3.0 + 0.4) / 3 = 1.2
    assert MeanEntropy(1.19).escalate(b) and not MeanEntropy(1.21).escalate(b)
    assert not MeanEntropy(2.9).escalate(b)  # where the max-entropy gate would fire
    assert Margin(0.06).escalate(b) and not Margin(0.05).escalate(b)
    assert MinLogProb(-3.9).escalate(b) and not MinLogProb(-4.0).escalate(b)


def test_random_gate_rate_and_determinism():
    """random:P escalates about a share P of distinct blocks, the same way every time for one seed and block,
    and differently for another seed, another start or other tokens."""
    blocks = [Block((i % 7, i % 11), (-0.1, -0.1), (0.5, 0.5), (0.8, 0.8), i) for i in range(4000)]
    for p in (0.0, 0.3, 1.0):
        share = sum(RandomGate(p).escalate(b) for b in blocks) / len(blocks)
        assert abs(share - p) < 0.03, (p, share)  # binomial sd at p=0.3 is 0.007
    g = RandomGate(0.5, seed=0)
    first = [g.escalate(b) for b in blocks[:200]]
    assert first == [RandomGate(0.5, seed=0).escalate(b) for b in blocks[:200]]
    assert first != [RandomGate(0.5, seed=1).escalate(b) for b in blocks[:200]]
    moved = [Block(b.tokens, b.logprobs, b.entropies, b.margins, b.start + 1) for b in blocks[:200]]
    other = [Block((b.tokens[0] + 100, b.tokens[1]), b.logprobs, b.entropies, b.margins, b.start)
             for b in blocks[:200]]
    assert first != [g.escalate(b) for b in moved] and first != [g.escalate(b) for b in other]


def test_signal_gates_skip_unknown_values():
    """A None signal (not recorded for that node) is skipped; a block with none known escalates for stability
    and MC-dropout (unknown counts as unstable) but not for audio shift (no evidence of a shift)."""
    part = ({"stability": None, "audio_shift": None, "mc_agree": None},
            {"stability": 0.7, "audio_shift": 0.3, "mc_agree": 0.6})
    b = block(extras=part)
    assert not Stability(0.7).escalate(b) and Stability(0.71).escalate(b)
    assert AudioShift(0.29).escalate(b) and not AudioShift(0.3).escalate(b)
    assert not McDropout(0.6).escalate(b) and McDropout(0.61).escalate(b)
    none = block(extras=({"stability": None, "audio_shift": None, "mc_agree": None},) * 2)
    assert Stability(0.0).escalate(none) and McDropout(0.0).escalate(none)
    assert not AudioShift(-1.0).escalate(none)
    # min/max over the block: the deciding value is the first token's here
    two = block(extras=({"stability": 0.1, "audio_shift": 2.0, "mc_agree": 0.2},
                        {"stability": 0.9, "audio_shift": 0.1, "mc_agree": 0.9}))
    assert Stability(0.15).escalate(two) and not Stability(0.1).escalate(two)
    assert AudioShift(1.9).escalate(two) and not AudioShift(2.0).escalate(two)
    assert McDropout(0.25).escalate(two) and not McDropout(0.2).escalate(two)


def test_signal_gates_name_the_missing_column():
    """The refusal names the x_ column and how to get it, for a missing key and for a block without extras."""
    for gate, col in ((Stability(0.5), "x_stability"), (AudioShift(0.5), "x_audio_shift"),
                      (McDropout(0.5), "x_mc_agree")):
        for b in (block(), block(extras=(None, None))):
            with pytest.raises(UserError) as e:
                gate.escalate(b)
            msg = str(e.value)
            assert msg == (f"this gate needs the per-node signal {col}, which the trace lacks; record it when "
                           "collecting (see docs/trace-format.md) or use a gate on the drafter's logits")
