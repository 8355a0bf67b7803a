"""`collect --signals` on tiny models: every x_* value equals a direct computation with plain transformers
(full forward passes, no caches, the dropout masks drawn here), the trace loads, the signal gates replay on it,
and `gates eval` ranks the signals and names the missing ones."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("soundfile")

import numpy as np
import polars as pl
from click.testing import CliRunner
from tiny_models import make_pair

from sectrace.cli import main
from sectrace.collect.collector import CollectConfig, collect
from sectrace.errors import UserError
from sectrace.gates import parse_gate, parse_policy
from sectrace.models.signals import parse_signals
from sectrace.protocol import Accept, Policy, run
from sectrace.simulate import Replayer
from sectrace.trace import load_trace, sample_trace_path

TEXTS = {"u0": "i cannot believe you did that", "u1": "that is wonderful news"}
TEMPLATE = "Transcript: {transcript}\nDescribe the speaker's emotion in one sentence."
N, P, SEED, K = 6, 0.2, 3, 5
SPEC = f"mc-dropout:n={N}:p={P}:seed={SEED},stability:k={K},audio-shift"
#: Explored live: the signal gates decide during collection from the drafts' extras, and replay must agree.
POLICIES = ("k=3 gate=never accept=top1", "k=3 gate=always accept=top1", "k=3 gate=mc-dropout:1 accept=top1",
            "k=3 gate=stability:0.6 accept=top1", "k=3 gate=audio:0.03 accept=top1", "k=1 gate=always accept=top1")
COLS = ["x_mc_agree", "x_mc_prob_var", "x_mc_entropy", "x_stability", "x_audio_shift"]


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    tok, d, v = make_pair(root)
    manifest = root / "data.jsonl"
    manifest.write_text("".join(json.dumps({"utt_id": u, "references": ["r"], "text": t}) + "\n"
                                for u, t in TEXTS.items()))
    base = {"manifest": manifest, "drafter": str(d), "verifier": str(v), "max_new_tokens": 5, "edge_threads": None,
            "policies": [parse_policy(p, 5) for p in POLICIES], "timing_repeats": 1, "probes": False,
            "backend": "causal-lm", "prompt": TEMPLATE}
    collect(CollectConfig(out=root / "sig", signals=parse_signals(SPEC), **base), echo=lambda *a: None)
    base["policies"] = [parse_policy(p, 5) for p in POLICIES if "never" in p or "always" in p]
    collect(CollectConfig(out=root / "plain", **base), echo=lambda *a: None)
    return root, tok, d, load_trace(root / "sig"), load_trace(root / "plain")


def _prefixes(nodes: pl.DataFrame) -> dict[int, tuple]:
    """node_id -> caption token ids from the root, read off parent links."""
    rows = {r["node_id"]: r for r in nodes.iter_rows(named=True)}
    out = {}

    def walk(nid):
        if nid not in out:
            r = rows[nid]
            out[nid] = () if r["parent_id"] is None else walk(r["parent_id"]) + (r["token"],)
        return out[nid]

    for nid in rows:
        walk(nid)
    return out


def _softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _direct(model, tok, text, prefix, token):
    """The five signals at one node from full, uncached forward passes of the plain transformers model."""
    V = len(tok)
    prompt = tok(TEMPLATE.format(transcript=text))["input_ids"]
    blind = tok(TEMPLATE.format(transcript="").strip())["input_ids"]
    seq = prompt + list(prefix)

    def last(ids, batch=1):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids] * batch))
        return out.logits[:, -1, :V].double().numpy()

    logits = last(seq)[0]
    p = _softmax(logits)
    assert int(np.argmax(logits)) == token  # the drafted token is the drafter's greedy one
    # MC-dropout: N copies of the whole sequence; dropout on each MLP output at the last position only.
    h = hashlib.blake2b(f"{SEED}/{','.join(str(t) for t in prefix)}".encode(), digest_size=8)
    gen = torch.Generator().manual_seed(int.from_bytes(h.digest(), "little") & (2**63 - 1))

    def hook(_m, _i, out):
        out = out.clone()
        keep = (torch.rand((N, 1, out.shape[-1]), generator=gen) >= P).to(out.dtype)
        out[:, -1:, :] = out[:, -1:, :] * keep / (1 - P)
        return out

    hs = [layer.mlp.register_forward_hook(hook) for layer in model.model.layers]
    try:
        mc = last(seq, N)
    finally:
        for x in hs:
            x.remove()
    pm = _softmax(mc)
    ent = -(pm * np.log(np.where(pm > 0, pm, 1))).sum(axis=1)
    q = _softmax(last(blind + list(prefix))[0])
    return {"x_mc_agree": float((mc.argmax(axis=1) == token).mean()),
            "x_mc_prob_var": float(pm[:, token].var()), "x_mc_entropy": float(ent.mean()),
            "x_stability": _stability(logits, token, lambda y: last(seq + [y])[0]),
            "x_audio_shift": float((p * (np.log(p) - np.log(q))).sum())}


def _stability(logits, token, row_after):
    """The K most likely candidates (drafted first), each appended (``row_after(y)``: the next logits); the
    following token is the greedy one after the draft; 1 - TV between prior and posterior over them."""
    p = _softmax(logits)
    order = [token] + [int(i) for i in np.argsort(-logits, kind="stable") if int(i) != token][: K - 1]
    rows = np.stack([row_after(y) for y in order])
    nxt = int(np.argmax(rows[0]))
    prior = p[order] / p[order].sum()
    post = prior * _softmax(rows)[:, nxt]
    post = post / post.sum()
    return 1 - 0.5 * float(np.abs(prior - post).sum())


def test_every_signal_equals_a_direct_transformers_computation(collected):
    from transformers import AutoModelForCausalLM

    _, tok, d, tr, _ = collected
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    checked = 0
    for uid, text in TEXTS.items():
        nodes = tr.nodes.filter(pl.col("utt_id") == uid)
        pre = _prefixes(nodes)
        drafted = nodes.filter(pl.col("d_token").is_not_null()).sort("depth")
        for r in drafted.head(7).iter_rows(named=True):  # root and the shallow nodes of every branch
            want = _direct(model, tok, text, pre[r["node_id"]], r["d_token"])
            for c in COLS:
                assert r[c] == pytest.approx(want[c], rel=2e-5, abs=1e-7), (uid, r["node_id"], c)
            checked += 1
    assert checked == 14
    # Not vacuous: the signals vary across nodes, and dropout really moved the drafter somewhere.
    x = tr.nodes.drop_nulls("d_token")
    assert x["x_stability"].n_unique() > 5 and x["x_audio_shift"].max() > 1e-3
    assert x["x_mc_prob_var"].max() > 0


def test_signals_leave_the_trie_unchanged_and_record_themselves(collected):
    _, _, _, tr, plain = collected
    # Every state the plain collection recorded, the signal collection recorded with the same values.
    base = [c for c in plain.nodes.columns if c.startswith("d_") or c.startswith("v_") and not c.endswith("_child")]
    for uid in TEXTS:
        a, b = (t.nodes.filter(pl.col("utt_id") == uid) for t in (plain, tr))
        pa, pb = _prefixes(a), _prefixes(b)
        row_b = {pb[r["node_id"]]: r for r in b.iter_rows(named=True)}
        for r in a.iter_rows(named=True):
            other = row_b[pa[r["node_id"]]]
            for c in base:  # what the plain collection recorded, the signal one recorded alike
                if r[c] is not None:
                    assert r[c] == other[c], (uid, c)
        assert len(pa) < len(pb)  # the signal-gated policies explored more
    x = tr.nodes
    drafted = x["d_token"].is_not_null()
    for c in COLS:  # a value on every drafted node, none elsewhere
        assert (x[c].is_not_null() == drafted).all(), c
    d = x.filter(drafted)
    assert all(math.isfinite(v) for c in COLS for v in d[c].to_list())
    assert d["x_mc_agree"].is_between(0, 1).all() and d["x_stability"].is_between(0, 1).all()
    assert d["x_mc_prob_var"].is_between(0, 0.25).all()
    assert (d["x_mc_entropy"] >= 0).all() and (d["x_audio_shift"] >= 0).all()
    # x_mc_agree is a share of N passes
    assert np.allclose(d["x_mc_agree"].to_numpy() * N, np.round(d["x_mc_agree"].to_numpy() * N), atol=1e-5)
    sig = tr.manifest["signals"]
    assert sig["requested"] == {"mc-dropout": {"n": N, "p": P, "seed": SEED}, "stability": {"k": K},
                                "audio-shift": {}}
    assert sig["columns"] == COLS and set(sig["definitions"]) == set(COLS)
    comp = sig["compute"]
    assert comp["drafted_nodes"] == d.height
    assert comp["mc-dropout"]["positions_per_drafted_node"] == N
    assert comp["stability"]["positions_per_drafted_node"] == K
    # audio shift: one token per node plus the no-audio prompt once per utterance
    assert 1 < comp["audio-shift"]["positions_per_drafted_node"] < 1 + 60 * len(TEXTS) / d.height
    assert all(comp[s]["seconds_per_drafted_node"] > 0 for s in ("mc-dropout", "stability", "audio-shift"))
    assert tr.manifest["collection"]["identity"]["signals"] == sig["requested"]
    assert "signals" not in plain.manifest and "signals" not in plain.manifest["collection"]["identity"]


def _escalations(tr, spec, k=3):
    pol = Policy(k=k, gate=parse_gate(spec, tr), gate_spec=spec, accept=Accept("top1", 1), privacy="features",
                 max_new_tokens=5)
    sessions = Replayer(tr).sessions
    runs = [run(sessions[u], pol) for u in TEXTS]
    return sum(r.escalations for r in runs), sum(r.blocks for r in runs)


@pytest.mark.parametrize("gate,col", [("stability", "x_stability"), ("mc-dropout", "x_mc_agree"),
                                      ("audio", "x_audio_shift")])
def test_signal_gates_replay_on_the_collected_trace(collected, gate, col):
    _, _, _, tr, _ = collected
    vals = tr.nodes[col].drop_nulls()
    lo, hi = float(vals.min()), float(vals.max())
    if gate == "audio":  # escalates when the block's largest value > T
        every, never = f"audio:{lo / 2}", f"audio:{hi + 1}"
    else:  # escalates when the block's smallest value < T (a share or a 1 - TV: at most 1)
        every, never = (f"{gate}:{hi + 1e-4}" if hi < 1 else None), f"{gate}:{lo}"
    if every:
        esc, blocks = _escalations(tr, every)
        assert esc == blocks > 0
    esc, blocks = _escalations(tr, never)
    assert esc == 0 and blocks > 0
    # The policies explored live with these gates replay from the trace alone (no coverage miss), and the
    # escalation count matches a hand count over the replayed blocks' recorded values.
    spec = next(p.split()[1][5:] for p in POLICIES if p.split()[1].startswith(f"gate={gate}:"))
    thr = float(spec.split(":")[1])
    seen = []

    class Tap:
        def escalate(self, block):
            v = [e[col[2:]] for e in block.extras]
            seen.append(max(v) > thr if gate == "audio" else min(v) < thr)
            return seen[-1]

    pol = Policy(k=3, gate=Tap(), gate_spec=spec, accept=Accept("top1", 1), privacy="features", max_new_tokens=5)
    sessions = Replayer(tr).sessions
    tapped = sum(run(sessions[u], pol).escalations for u in TEXTS)
    assert tapped == sum(seen) == _escalations(tr, spec)[0]


def _median_rank(tr) -> int:
    """Random tiny models disagree almost always (ranks in the hundreds): split the labels at the median rank."""
    return int(tr.nodes["v_audio_rank"].drop_nulls().median())


def _bare_copy(tmp_path):
    """The bundled real trace without its signal columns, as it was before it was re-collected with --signals."""
    from sectrace.trace import write_trace

    real = load_trace(sample_trace_path())
    bare = real.nodes.drop([c for c in real.nodes.columns if c.startswith("x_")])
    manifest = {k: v for k, v in real.manifest.items() if k != "signals"}
    return write_trace(tmp_path / "bare", manifest, real.utterances, bare, real.timings, real.vocab)


def test_gates_eval_ranks_the_signals_and_names_missing_ones(collected, tmp_path):
    _, _, _, tr, _ = collected
    res = CliRunner().invoke(main, ["gates", "eval", "--trace", str(tr.path), "--rank", str(_median_rank(tr))])
    assert res.exit_code == 0, res.output
    for name in ("stability", "mc-dropout", "mc-var", "mc-entropy", "audio", "logprob", "entropy", "margin"):
        assert any(line.split()[:1] == [name] for line in res.output.splitlines()), name
    assert "none missing" in res.output
    res = CliRunner().invoke(main, ["gates", "eval", "--trace", str(_bare_copy(tmp_path))])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("RQ1 signals"))
    assert "log-prob, entropy, margin;" in line
    assert "MISSING" in line and "stability (x_stability)" in line and "MC-dropout" in line
    assert "audio shift (x_audio_shift)" in line and "--signals stability,mc-dropout,audio-shift" in line
    assert not any(ln.split()[:1] == ["stability"] for ln in res.output.splitlines())


def test_signal_table_scores_each_signal_on_its_own_nodes(collected):
    """A signal missing on some nodes is ranked where it exists; the other signals keep every node."""
    import dataclasses

    from sectrace.analysis.evaluate import signal_table

    _, _, _, tr, _ = collected
    part = dataclasses.replace(tr, nodes=tr.nodes.with_columns(
        pl.when(pl.col("depth") == 0).then(None).otherwise(pl.col("x_stability")).alias("x_stability")), _cache={})
    rej = signal_table(part, rank=_median_rank(tr)).filter(pl.col("label") == "reject")
    got = dict(zip(rej["signal"], rej["tokens"]))
    judged = tr.nodes.filter(pl.col("d_token").is_not_null() & pl.col("v_audio_rank").is_not_null())
    roots = judged.filter(pl.col("depth") == 0).height
    assert got["entropy"] == got["mc-dropout"] == judged.height
    assert got["stability"] == judged.height - roots and roots > 0


def test_gates_train_names_missing_signals(tmp_path):
    args = ["gates", "train", "--model", "logreg", "--folds", "2"]
    res = CliRunner().invoke(main, [*args, "--trace", str(_bare_copy(tmp_path)), "--out", str(tmp_path / "g.json")])
    assert res.exit_code == 0, res.output
    assert "MISSING (not ranked): stability" in res.output
    res = CliRunner().invoke(main, [*args, "--trace", str(sample_trace_path()), "--out", str(tmp_path / "h.json")])
    assert res.exit_code == 0, res.output
    assert "none missing" in res.output and "MISSING" not in res.output


def test_parse_signals_refuses_bad_specs():
    s = parse_signals("stability,audio-shift,mc-dropout:n=4")
    assert s.names == ("mc-dropout", "stability", "audio-shift")
    assert s.record() == {"mc-dropout": {"n": 4, "p": 0.1, "seed": 0}, "stability": {"k": 8}, "audio-shift": {}}
    assert parse_signals(None) is None and parse_signals(" ") is None
    for bad, words in [("entropy", "unknown signal"), ("stability,stability", "twice"),
                       ("mc-dropout:n=1", "whole number in [2, 256]"), ("mc-dropout:p=0", "(0.0, 0.9]"),
                       ("mc-dropout:p=nan", "(0.0, 0.9]"), ("stability:q=3", "k= ("),
                       ("mc-dropout:n", "cannot read")]:
        with pytest.raises(UserError, match=words.replace("(", r"\(").replace("[", r"\[").replace("]", r"\]")):
            parse_signals(bad)


def test_extend_refuses_other_signals_before_loading_models(collected):
    root, _, d, tr, _ = collected
    cfg = CollectConfig(manifest=root / "data.jsonl", drafter=str(d), verifier=str(d), out=root / "ext",
                        policies=[parse_policy(POLICIES[0], 5)], max_new_tokens=5, backend="causal-lm",
                        prompt=TEMPLATE, extend=tr.path, probes=False, edge_threads=None)
    with pytest.raises(UserError, match="collected with --signals mc-dropout:n=6"):
        collect(cfg, echo=lambda *a: None)
    assert not (root / "ext.parts").exists()


def test_a_policy_gating_on_an_uncollected_signal_is_refused_first(collected, tmp_path):
    root, _, d, _, _ = collected
    for gate, words in [("stability:0.5", "add --signals stability"),
                        ("any(entropy:2,audio:0.1)", "add --signals audio-shift"),
                        ("all(mc-dropout:0.5,stability:0.5)", "x_mc_agree, x_stability")]:
        pol = Policy(k=3, gate=parse_gate(gate), gate_spec=gate, accept=Accept("top1", 1), max_new_tokens=5)
        cfg = CollectConfig(manifest=root / "data.jsonl", drafter=str(d), verifier=str(d), out=tmp_path / "o",
                            policies=[pol], max_new_tokens=5, backend="causal-lm",
                            signals=parse_signals("mc-dropout") if "any" in gate else None)
        with pytest.raises(UserError, match=words.replace("(", r"\(")):
            collect(cfg, echo=lambda *a: None)
    assert not (tmp_path / "o.parts").exists()


def test_cli_collect_signals_option(collected, tmp_path):
    root, _, d, _, _ = collected
    res = CliRunner().invoke(main, ["collect", str(root / "data.jsonl"), "--backend", "causal-lm", "--drafter",
                                    str(d), "--verifier", str(d), "--out", str(tmp_path / "t"),
                                    "--signals", "mc-dropout:n=0"])
    assert res.exit_code == 2 and "whole number in [2, 256]" in res.output
    assert not (tmp_path / "t.parts").exists()


def test_signals_on_the_omni_thinker_match_fresh_passes(tmp_path):
    """3-D rope positions and audio features: the batched passes on copied caches equal fresh CachedLM passes
    (the path test_collect_audio checks against generate()), and dropout at a vanishing rate changes nothing."""
    import soundfile as sf
    from tiny_models import make_audio_tokenizer, make_thinker, tone

    from sectrace.models.audio import AudioChatBackend, load_feature_extractor
    from sectrace.models.dataset import Utterance
    from sectrace.models.lm import CachedLM
    from sectrace.models.pair import PairSource, load_pair
    from sectrace.models.signals import with_signals

    tok = make_audio_tokenizer(tmp_path / "tok")
    make_thinker(tmp_path / "d", tok, seed=1)
    make_thinker(tmp_path / "v", tok, seed=2)
    sf.write(tmp_path / "a.wav", tone(1.3, 220.0), 16000)
    info = load_pair(str(tmp_path / "d"), str(tmp_path / "v"), backend="omni-thinker")
    backend = AudioChatBackend("omni-thinker", info.tokenizer, info.verifier, load_feature_extractor(str(tmp_path / "d")))
    prep = backend.prepare(Utterance("u", tmp_path / "a.wav", ["r"]), ("audio", "blind"))
    V, blind = info.shared_vocab, prep.cloud_prompts["blind"]
    src = with_signals(PairSource(CachedLM(info.drafter, V, prep.edge_kwargs), prep.edge_prompt, {}, {}, info.eos),
                       parse_signals(f"mc-dropout:n=3:p=1e-9,stability:k={K},audio-shift"),
                       CachedLM(info.drafter, V), blind)

    def fresh(seq, kwargs):
        return CachedLM(info.drafter, V, kwargs).logits_for(seq, 1)[0].numpy()

    prefix = ()
    for _ in range(3):
        d = src.draft(prefix)
        seq = prep.edge_prompt + list(prefix)
        logits = fresh(seq, prep.edge_kwargs)
        p, q = _softmax(logits), _softmax(fresh(blind + list(prefix), {}))
        ent = -(p * np.log(p)).sum()
        assert d.extra["mc_agree"] == 1 and d.extra["mc_prob_var"] == pytest.approx(0, abs=1e-12)
        assert d.extra["mc_entropy"] == pytest.approx(ent, rel=1e-9)
        assert d.extra["stability"] == pytest.approx(
            _stability(logits, d.token, lambda y, seq=seq: fresh(seq + [y], prep.edge_kwargs)), rel=1e-9, abs=1e-12)
        assert d.extra["audio_shift"] == pytest.approx(float((p * (np.log(p) - np.log(q))).sum()), rel=1e-9)
        assert d.extra["audio_shift"] > 1e-6  # the audio really reaches the drafter
        prefix += (d.token,)
