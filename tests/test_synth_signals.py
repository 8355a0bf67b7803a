"""Synthetic and real traces mean the same thing: `trace synth` writes every RQ1 signal with the collector's
definitions, units and ranges, its MC-dropout columns equal a plain recomputation of the stated model over the
declared vocabulary, and a signal gate at T reads the same column in the same direction on both kinds of trace."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from array import array

import polars as pl
import pytest
from click.testing import CliRunner

from sectrace.cli import main
from sectrace.explore.synth import AlphaModel, AlphaSource, synth_trace
from sectrace.gates import parse_gate, parse_policy
from sectrace.protocol import Block, drafter_only, run
from sectrace.simulate import Replayer
from sectrace.trace import load_trace

MC = ["x_mc_agree", "x_mc_prob_var", "x_mc_entropy"]
SIGNAL_COLS = MC + ["x_stability", "x_audio_shift"]
MASK = 2**64 - 1


def _policies(*extra):
    return [drafter_only(24)] + [parse_policy(p, 24) for p in ("k=3 gate=always accept=top1", *extra)]


def _drafted(nodes: pl.DataFrame) -> pl.DataFrame:
    return nodes.filter(pl.col("d_token").is_not_null())


def test_every_signal_is_written_in_the_collectors_ranges(small_trace):
    m = small_trace.manifest
    n = m["signals"]["requested"]["mc-dropout"]["n"]  # where `collect --signals` records N
    assert (n, m["signals"]["requested"]["mc-dropout"]["p"]) == (8, 0.1)
    assert m["signals"]["columns"] == SIGNAL_COLS
    d = _drafted(small_trace.nodes)
    leaves = small_trace.nodes.filter(pl.col("d_token").is_null())
    assert d.height > 1000 and leaves.height > 0
    for c in SIGNAL_COLS:
        assert small_trace.nodes.schema[c] == pl.Float32, c
        assert d[c].null_count() == 0 and leaves[c].null_count() == leaves.height, c
    log_v = math.log(m["drafter"]["vocab_size"])
    assert m["drafter"]["vocab_size"] == m["shared_vocab_size"] == small_trace.vocab.height
    assert d["x_mc_agree"].is_between(0, 1).all() and d["x_stability"].is_between(0, 1).all()
    agree_n = d["x_mc_agree"].to_numpy() * n
    assert (abs(agree_n - agree_n.round()) < 1e-5).all()  # a share of N passes
    assert d["x_mc_prob_var"].is_between(0, 0.25).all() and d["x_mc_prob_var"].max() > 0
    assert d["x_mc_entropy"].is_between(0, log_v).all() and d["d_entropy"].is_between(0, log_v).all()
    assert (d["x_audio_shift"] >= 0).all()
    # the signals vary: MC-dropout flips some drafts and keeps most
    assert 0.3 < (d["x_mc_agree"] == 1).mean() < 0.95 and (d["x_mc_agree"] < 0.5).sum() > 0


def test_signals_are_deterministic_per_seed():
    def nodes(**kw):
        return synth_trace(AlphaModel(**kw), 2, _policies())[2]

    a, b = nodes(seed=4), nodes(seed=4)
    assert a.equals(b)
    assert not a.select(MC).equals(nodes(seed=5).head(a.height).select(MC))
    # the mask seed moves only the MC-dropout columns: the trie and the other signals are unchanged
    c = nodes(seed=4, mc_seed=9)
    assert c.drop(MC).equals(a.drop(MC)) and not c.select(MC).equals(a.select(MC))
    # more passes or a higher rate: the same trie, other MC values
    assert nodes(seed=4, mc_rate=0.3).drop(MC).equals(a.drop(MC))


# --- the stated model, recomputed plainly (docs/trace-format.md, "Synthetic vs real") ------------------------
def _stream(model, utt, prefix, salt=b""):
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{model.seed}/{utt}/".encode())
    h.update(array("i", prefix).tobytes())
    h.update(salt)
    return random.Random(int.from_bytes(h.digest(), "little"))


def _splitmix(x):
    z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _normal(seed, j):
    """The j-th (from 1) normal draw of a node: SplitMix64 of seed + j*golden, Box-Muller on its two halves."""
    z = _splitmix((seed + j * 0x9E3779B97F4A7C15) & MASK)
    u1, u2 = ((z >> 32) + 0.5) / 2**32, ((z & 0xFFFFFFFF) + 0.5) / 2**32
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


def _plain_mc(model, utt, prefix, topk_probs, tail_support=2000):
    """N passes over the full declared vocabulary (K top tokens, then ``tail_support`` tail tokens sharing the
    leftover mass), each a softmax of log p plus sigma times one normal draw per top token and one for the tail."""
    u = _stream(model, utt, prefix).random()
    rx = _stream(model, utt, prefix, b"x")
    rx.random(), rx.random(), rx.random()  # x_stability, then x_audio_shift's two draws
    v = model.coupling * u + (1 - model.coupling) * rx.random()
    sigma = 2.0 * math.sqrt(model.mc_rate / (1 - model.mc_rate)) * (0.15 + v)
    seed = rx.getrandbits(64) ^ _splitmix(model.mc_seed)
    k = len(topk_probs)
    tail = 1 - sum(topk_probs)
    p = list(topk_probs) + [tail / tail_support] * tail_support
    agree, p_tok, ent = 0, [], []
    for s in range(model.mc_passes):
        eps = [_normal(seed, s * (k + 1) + g + 1) for g in range(k + 1)]
        logits = [math.log(pi) + sigma * eps[min(i, k)] for i, pi in enumerate(p)]
        w = [math.exp(x) for x in logits]
        z = sum(w)
        q = [x / z for x in w]
        agree += max(range(len(q)), key=q.__getitem__) == 0  # the drafted token is index 0
        p_tok.append(q[0])
        ent.append(-sum(x * math.log(x) for x in q if x > 0))
    mean = sum(p_tok) / len(p_tok)
    return {"mc_agree": agree / model.mc_passes, "mc_prob_var": sum((x - mean) ** 2 for x in p_tok) / len(p_tok),
            "mc_entropy": sum(ent) / len(ent)}, -sum(x * math.log(x) for x in p)


@pytest.mark.parametrize("model", [AlphaModel(seed=2), AlphaModel(seed=3, coupling=0.9, mc_passes=5, mc_rate=0.3,
                                                                   mc_seed=11)])
def test_mc_columns_equal_a_plain_computation_over_the_declared_vocabulary(model):
    src = AlphaSource(model, 1)
    rec_prefixes, prefix = [], ()
    for _ in range(12):  # down the drafter's greedy path, and one side branch per state
        d = src.draft(prefix)
        rec_prefixes += [prefix, prefix + (d.topk_ids[1],)]
        if d.eos:
            break
        prefix = prefix + (d.token,)
    flips = 0
    for pre in rec_prefixes:
        d = src.draft(pre)
        want, entropy = _plain_mc(model, 1, pre, d.topk_probs)
        assert d.entropy == pytest.approx(entropy, rel=1e-9)  # d_entropy: the same distribution's entropy
        assert d.extra["mc_agree"] == want["mc_agree"]
        assert d.extra["mc_prob_var"] == pytest.approx(want["mc_prob_var"], rel=1e-6, abs=1e-15)
        assert d.extra["mc_entropy"] == pytest.approx(want["mc_entropy"], rel=1e-9)
        flips += d.extra["mc_agree"] < 1
    assert flips > 0  # the check covers passes that change the top-1


class Drafts:
    """The source, noting every state it drafts from."""

    root = ()

    def __init__(self, src):
        self.src, self.seen = src, []

    def draft(self, prefix):
        self.seen.append(prefix)
        return self.src.draft(prefix)

    def advance(self, prefix, token):
        return self.src.advance(prefix, token)

    def judge(self, prefix, tokens, mode):
        return self.src.judge(prefix, tokens, mode)


def test_a_deferred_batch_equals_node_by_node():
    """`trace synth` computes MC-dropout per utterance in one batch; the values are those of a live draft."""
    pol = parse_policy("k=3 gate=always accept=top1", 30)
    got = {}
    for defer in (False, True):
        src = AlphaSource(AlphaModel(seed=6), 2, defer_mc=defer)
        drafts = Drafts(src)
        run(drafts, pol)
        src.fill_mc()
        got[defer] = [src.draft(p).extra for p in drafts.seen]
    assert got[True] == got[False] and len(got[True]) > 10


def test_gates_eval_lists_all_six_rq1_signals_on_a_synthetic_trace(small_trace_path):
    res = CliRunner().invoke(main, ["gates", "eval", str(small_trace_path)])
    assert res.exit_code == 0, res.output
    rows = {ln.split()[0] for ln in res.output.splitlines() if ln.split()[1:2] == ["reject"]}
    assert {"logprob", "entropy", "margin", "stability", "mc-dropout", "mc-var", "mc-entropy", "audio"} <= rows
    line = next(ln for ln in res.output.splitlines() if ln.startswith("RQ1 signals"))
    assert line == ("RQ1 signals in this trace: log-prob, entropy, margin, stability, MC-dropout, audio shift; "
                    "none missing")
    assert "MISSING" not in res.output


def test_the_mc_dropout_gate_explores_and_replays_on_a_synthetic_trace(tmp_path):
    spec = "k=3 gate=mc-dropout:0.8 accept=top1"
    res = CliRunner().invoke(main, ["trace", "synth", str(tmp_path / "t"), "--utterances", "4", "--seed", "2",
                                    "--max-new-tokens", "32", "--policy", spec])
    assert res.exit_code == 0, res.output
    tr = load_trace(tmp_path / "t")
    pol = parse_policy(spec, 32)
    seen = []

    class Tap:  # the gate's rule, by hand: escalate when the block's smallest x_mc_agree < 0.8
        def escalate(self, block):
            seen.append(min(e["mc_agree"] for e in block.extras) < 0.8)
            return seen[-1]

    sessions = Replayer(tr).sessions
    model = AlphaModel(seed=2)
    esc = blocks = 0
    for i, uid in enumerate(sorted(sessions)):
        replayed = run(sessions[uid], pol)  # explored live, so it replays without a coverage miss
        live = run(AlphaSource(model, i), pol)
        assert replayed.tokens == live.tokens and replayed.escalations == live.escalations
        tapped = run(sessions[uid], dataclasses.replace(pol, gate=Tap()))
        assert tapped.escalations == replayed.escalations
        esc, blocks = esc + replayed.escalations, blocks + replayed.blocks
    assert 0 < esc < blocks  # the threshold splits the blocks: it neither always nor never escalates


def _single_token_blocks(tr):
    """One block per drafted node, carrying the node's recorded x_* values the way replay hands them to gates."""
    cols = [c for c in tr.nodes.columns if c.startswith("x_")]
    for row in _drafted(tr.nodes).iter_rows(named=True):
        yield row, Block((row["d_token"],), (row["d_logprob"],), (row["d_entropy"],), (row["d_margin"],), 0,
                         ({c[2:]: row[c] for c in cols},))


def _same_reading(tr, quantile, splits=True):
    """Each signal gate at a threshold inside the trace's range escalates exactly when the one column it reads
    is on its risky side: below T for stability and MC agreement (1 = safe), above T for the audio shift."""
    for gate, col, risky in (("stability", "x_stability", lambda v, t: v < t),
                             ("mc-dropout", "x_mc_agree", lambda v, t: v < t),
                             ("audio", "x_audio_shift", lambda v, t: v > t)):
        t = float(_drafted(tr.nodes)[col].quantile(quantile))
        g = parse_gate(f"{gate}:{t}")
        decided = [(g.escalate(b), risky(row[col], t)) for row, b in _single_token_blocks(tr)]
        assert all(a == b for a, b in decided), gate
        assert not splits or 0 < sum(a for a, _ in decided) < len(decided), gate


def test_thresholds_mean_the_same_on_synthetic_and_collected_traces(small_trace, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("soundfile")
    from tiny_models import make_pair

    from sectrace.collect.collector import CollectConfig, collect
    from sectrace.models.signals import parse_signals

    tok, d, v = make_pair(tmp_path)
    manifest = tmp_path / "data.jsonl"
    manifest.write_text(json.dumps({"utt_id": "u0", "references": ["r"], "text": "that is wonderful news"}) + "\n")
    collect(CollectConfig(out=tmp_path / "real", manifest=manifest, drafter=str(d), verifier=str(v), max_new_tokens=5,
                          edge_threads=None, policies=[parse_policy("k=3 gate=always accept=top1", 5)],
                          timing_repeats=1, probes=False, backend="causal-lm",
                          prompt="Transcript: {transcript}\nDescribe the speaker's emotion in one sentence.",
                          signals=parse_signals("mc-dropout:n=8:p=0.1,stability,audio-shift")), echo=lambda *a: None)
    real = load_trace(tmp_path / "real")
    for tr in (small_trace, real):
        assert tr.manifest["signals"]["requested"]["mc-dropout"]["n"] == 8  # one place for N on both
        assert tr.manifest["signals"]["columns"] == SIGNAL_COLS
        assert all(tr.nodes.schema[c] == pl.Float32 for c in SIGNAL_COLS)
        dr = _drafted(tr.nodes)
        agree_n = dr["x_mc_agree"].to_numpy() * 8
        assert (abs(agree_n - agree_n.round()) < 1e-5).all()
        assert dr["x_mc_entropy"].is_between(0, math.log(tr.manifest["shared_vocab_size"])).all()
        assert dr["x_mc_prob_var"].is_between(0, 0.25).all() and dr["x_stability"].is_between(0, 1).all()
        assert (dr["x_audio_shift"] >= 0).all()
    _same_reading(small_trace, 0.3)
    _same_reading(real, 0.5, splits=False)  # two tiny random models: values may tie
