"""The causal-LM pair backend: lossless against generate, cache crop exact, explored policies replay exactly."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_models import make_pair, make_tokenizer  # noqa: E402

from sectrace.errors import UserError  # noqa: E402
from sectrace.models.lm import CachedLM  # noqa: E402
from sectrace.models.pair import PairSource, load_pair  # noqa: E402
from sectrace.protocol import lossless, run  # noqa: E402
from sectrace.trace import TrieRecorder  # noqa: E402

PROMPT = "describe the voice: the speaker sounds"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    tok, dpath, vpath = make_pair(root, drafter_rows=None)
    info = load_pair(str(dpath), str(vpath))
    return info


def _source(info, modes=("audio", "blind")):
    tok = info.tokenizer
    full = tok(PROMPT)["input_ids"]
    blind = tok("describe the voice:")["input_ids"]
    d = CachedLM(info.drafter, info.shared_vocab)
    vs = {m: CachedLM(info.verifier, info.shared_vocab) for m in modes}
    return PairSource(d, full, vs, {"audio": full, "blind": blind}, info.eos)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_always_escalate_top1_equals_verifier_greedy_generate(pair, k):
    src = _source(pair)
    max_new = 12
    out = run(TrieRecorder(src, ("audio",)), lossless(k, max_new_tokens=max_new, privacy="features"))
    ids = torch.tensor([src.cloud_prompts["audio"]])
    gen = pair.verifier.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new, min_new_tokens=0)
    expect = gen[0, ids.shape[1]:].tolist()
    assert out.tokens == expect
    # The drafter disagrees somewhere, so the check exercises corrections, not only acceptances.
    from sectrace.protocol import drafter_only

    assert run(TrieRecorder(src, ("audio",)), drafter_only(max_new)).tokens != expect


def test_logits_after_crop_equal_recompute(pair):
    """Tolerance: 1e-9 absolute on float64 models (the tiny models are float64)."""
    tok = pair.tokenizer
    base = tok(PROMPT)["input_ids"]
    a = base + [5, 9, 11, 13, 17]
    b = base + [5, 9, 40, 41]
    lm = CachedLM(pair.verifier, pair.shared_vocab)
    lm.logits_for(a, 1)
    got = lm.logits_for(b, 3)  # crops 3 positions, recomputes from the fork
    # Token 9's row comes from the first pass (reused), only 40 and 41 run again.
    assert (lm.counters.recomputed, lm.counters.reused, lm.counters.tokens) == (0, 1, len(a) + 2)
    fresh = CachedLM(pair.verifier, pair.shared_vocab).logits_for(b, 3)
    assert torch.allclose(got, fresh, atol=1e-9, rtol=0)
    # and the drafter's single-row path after several crops
    d = CachedLM(pair.drafter, pair.shared_vocab)
    for seq in (a, b, a[:-2], b + [3]):
        x = d.logits_for(seq, 1)
        y = CachedLM(pair.drafter, pair.shared_vocab).logits_for(seq, 1)
        assert torch.allclose(x, y, atol=1e-9, rtol=0)


def test_mismatched_tokenizers_refused(tmp_path, pair):
    from tiny_models import make_qwen2

    other_tok = make_tokenizer(tmp_path / "tok2", extra="completely different words here, zebra quartz xylophone")
    make_qwen2(tmp_path / "other", other_tok, seed=3)
    pair_dir = pair.drafter_name
    with pytest.raises(UserError, match="tokenizers differ"):
        load_pair(pair_dir, str(tmp_path / "other"))


def test_missing_model_path_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_pair(str(tmp_path / "nope"), str(tmp_path / "nope2"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        load_pair(str(tmp_path / "empty"), str(tmp_path / "empty"))


def test_padded_drafter_vocab_compared_over_shared_ids(tmp_path):
    tok, dpath, vpath = make_pair(tmp_path, drafter_rows=len(make_tokenizer(tmp_path / "t0")) + 17)
    info = load_pair(str(dpath), str(vpath))
    assert info.shared_vocab == len(tok) < info.drafter.lm_head.weight.shape[0]
    src = _source(info)
    d = src.draft(())
    assert 0 <= d.token < len(tok) and all(i < len(tok) for i in d.topk_ids)


def test_every_explored_policy_replays_exactly_from_the_written_trace(pair, tmp_path):
    import polars as pl

    from sectrace.explore import default_exploration
    from sectrace.explore.recorder import explore
    from sectrace.explore.synth import _timings
    from sectrace.trace import TrieSession, load_trace, write_trace

    pols = default_exploration(max_new_tokens=8, ks=(1, 3, 5))
    src = _source(pair)
    ex = explore(src, pols, ("audio", "blind"))
    assert not ex.truncated and len(ex.runs) == len(pols)
    nodes = ex.recorder.frames("u1")
    utt = {"utt_id": "u1", "references": ["x"], "audio_seconds": 1.0, "edge_prompt_tokens": 5,
           "cloud_prompt_tokens": 5, "blind_prompt_tokens": 3, "feature_bytes": 0, "raw_audio_bytes": 0,
           "emotion": None}
    card = {"name": "m", "revision": "r", "vocab_size": pair.shared_vocab, "tokenizer_fingerprint": "x"}
    manifest = {"tool_version": "t", "created": "now", "synthetic": False, "drafter": card, "verifier": card,
                "eos_token_ids": sorted(pair.eos), "verifier_modes": ["audio", "blind"], "prompt_template": PROMPT,
                "decoding": {"max_new_tokens": 8}, "hardware": {}, "dataset": {"name": "t"}}
    write_trace(tmp_path / "tr", manifest, [utt], nodes, _timings(0))
    tr = load_trace(tmp_path / "tr")
    sess = TrieSession(tr.nodes.filter(pl.col("utt_id") == "u1"), tr.modes)
    distinct = set()
    for pol in pols:
        live = ex.runs[pol.label]
        again = run(sess, pol)
        assert again.tokens == live.tokens, pol.label
        assert again.events == live.events, pol.label
        distinct.add(tuple(live.tokens))
    assert len(distinct) > 2  # the policies really differ, so the check is not vacuous


def test_extend_seeds_recorder_and_only_computes_misses(pair):
    from sectrace.explore import default_exploration
    from sectrace.explore.recorder import BudgetRecorder, explore, seed_recorder

    pols = default_exploration(max_new_tokens=8, ks=(3,))
    src = _source(pair)
    first = explore(src, pols[:3], ("audio", "blind"))
    nodes = first.recorder.frames("u")
    rec = BudgetRecorder(_source(pair), ("audio", "blind"))
    seed_recorder(rec, nodes, ("audio", "blind"))
    for pol in pols[:3]:
        assert run(rec, pol).tokens == first.runs[pol.label].tokens
    assert rec.source_calls == {"draft": 0, "judge": 0}
    more = explore(None, pols, ("audio", "blind"), recorder=rec)
    assert rec.source_calls["judge"] > 0 and all(r is not None for r in more.runs.values())


def test_node_budget_truncates(pair):
    from sectrace.explore import default_exploration
    from sectrace.explore.recorder import explore

    ex = explore(_source(pair), default_exploration(max_new_tokens=8, ks=(3,)), ("audio",), max_nodes=10)
    assert ex.truncated and len(ex.recorder.nodes) <= 10


def test_timing_probes_run_real_forward_passes(pair):
    """Every timed probe call must be a forward pass, not a reuse of stored logit rows."""
    from sectrace.collect.probes import probe

    model = pair.drafter
    calls = []
    orig = model.forward

    def counting(*a, **kw):
        calls.append(1)
        return orig(*a, **kw)

    model.forward = counting
    try:
        rows = probe(model, pair.shared_vocab, list(range(3, 13)), "edge", "cpu", 1, repeats=3,
                     verify=True, ctxs=(0,), ns=(1, 2))
    finally:
        del model.forward
    # prefill repeats at 3 lengths (the prompt, +16, +48 tokens), decode repeats, verify n=1 and n=2 repeats
    assert len(rows) == 3 * 1 + 3 + 3 + 3
    assert sorted({r[2] for r in rows if r[1] == "prefill"}) == [10, 26, 58]
    timed = 3 * 2 + 4 + 4 + 4  # each with its warm-up
    assert len(calls) >= timed
