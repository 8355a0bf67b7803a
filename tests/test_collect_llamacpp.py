"""The llama.cpp drafter (`collect --drafter-runtime llama-cpp`) on a tiny random Qwen2 written as GGUF.

Lossless against the verifier's greedy `generate`, the edge-only path equal to llama-cpp-python's own
greedy decoder, the KV cache reused (never a prefix recomputed), crops exact, the same trie replayed
from the trace as live, resume and shards, the manifest's runtime record, and the refusals.
"""

from __future__ import annotations

import hashlib
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("soundfile")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from tiny_models import make_pair, make_qwen2, make_tokenizer  # noqa: E402

from sectrace.cli import main  # noqa: E402
from sectrace.collect.collector import CollectConfig, collect  # noqa: E402
from sectrace.errors import UserError  # noqa: E402
from sectrace.explore import default_exploration  # noqa: E402
from sectrace.models.backends import CausalLMBackend  # noqa: E402
from sectrace.models.dataset import read_manifest  # noqa: E402
from sectrace.models.gguf_export import export_qwen2_gguf  # noqa: E402
from sectrace.models.llamacpp import LlamaCppLM, load_pair_llamacpp  # noqa: E402
from sectrace.models.lm import CachedLM, open_lm  # noqa: E402
from sectrace.models.pair import PairSource  # noqa: E402
from sectrace.protocol import drafter_only, lossless, run  # noqa: E402
from sectrace.trace import TrieRecorder, TrieSession, load_trace  # noqa: E402

TEXTS = ["i cannot believe you did that", "that is wonderful news", "leave me alone", "fine, whatever"]
PROMPT = "describe the voice: the speaker sounds"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamacpp")
    _, d, v = make_pair(root)
    gguf = export_qwen2_gguf(d, root / "drafter.gguf")
    rows = [{"utt_id": f"u{i}", "references": [f"ref {i}"], "emotion": "angry", "text": t}
            for i, t in enumerate(TEXTS)]
    manifest = root / "data.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, manifest, gguf, d, v


@pytest.fixture(scope="module")
def pair(setup):
    _, _, gguf, _, v = setup
    return load_pair_llamacpp(str(gguf), str(v), edge_threads=1)


def _source(info, full, blind, modes=("audio", "blind")):
    d = open_lm(info.drafter, info.shared_vocab)
    vs = {m: CachedLM(info.verifier, info.shared_vocab) for m in modes}
    return PairSource(d, full, vs, {"audio": full, "blind": blind}, info.eos)


def _reference_greedy(gguf, prompt, max_new, eos):
    """llama-cpp-python's own high-level greedy decoder: no trie, no slots, no crops."""
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=1, verbose=False)
    out = []
    for t in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        out.append(int(t))
        if t in eos or len(out) == max_new:
            break
    llm.close()
    return out


def test_export_keeps_the_tokenizer_and_the_model(setup, pair):
    """The GGUF's logits on a prompt match the float64 transformers model's (F32 weights, F16 KV cache)."""
    d = setup[3]
    tok = pair.tokenizer
    ids = tok(PROMPT)["input_ids"]
    got = open_lm(pair.drafter, pair.shared_vocab).logits_for(ids, 3)
    from sectrace.models.pair import load_causal_lm

    ref = CachedLM(load_causal_lm(str(d), "drafter"), pair.shared_vocab).logits_for(ids, 3)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 1e-2 * float(ref.abs().max())
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    assert pair.drafter.quantisation == "F32" and pair.drafter.n_vocab == len(tok)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_always_escalate_top1_equals_verifier_greedy_and_edge_only_equals_llama_greedy(setup, pair, k):
    tok = pair.tokenizer
    full, blind = tok(PROMPT)["input_ids"], tok("describe the voice:")["input_ids"]
    src = _source(pair, full, blind)
    max_new = 12
    out = run(TrieRecorder(src, ("audio",)), lossless(k, max_new_tokens=max_new, privacy="features"))
    ids = torch.tensor([full])
    gen = pair.verifier.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new,
                                 min_new_tokens=0)
    expect = gen[0, ids.shape[1]:].tolist()
    assert out.tokens == expect
    edge = run(TrieRecorder(src, ("audio",)), drafter_only(max_new)).tokens
    assert edge == _reference_greedy(setup[2], full, max_new, pair.eos)
    assert edge != expect  # the drafter disagrees, so corrections were exercised


def test_crops_and_branches_reuse_the_cache_and_equal_a_fresh_context(pair):
    tok = pair.tokenizer
    base = tok(PROMPT)["input_ids"]
    a = base + [5, 9, 11, 13, 17]
    b = base + [5, 9, 40, 41]
    lm = open_lm(pair.drafter, pair.shared_vocab)
    assert isinstance(lm, LlamaCppLM)
    lm.logits_for(a, 1)
    assert lm.counters.tokens == len(a) and lm.counters.prefill_tokens == len(a)
    got_b = lm.logits_for(b, 1)  # a new branch: the shared prefix is copied (seq_cp), only 40, 41 run
    assert lm.counters.tokens == len(a) + 2 and lm.counters.recomputed == 0
    got_a = lm.logits_for(a, 1)  # back to the first branch: its slot still holds it, nothing runs
    assert lm.counters.tokens == len(a) + 2 and lm.counters.reused == 1
    lm.logits_for(a[:-2], 1)  # up the trie: a row never computed, so one position runs again
    assert lm.counters.tokens == len(a) + 3 and lm.counters.recomputed == 1
    for seq, got in ((a, got_a), (b, got_b)):
        fresh = open_lm(pair.drafter, pair.shared_vocab).logits_for(seq, 1)
        assert torch.allclose(got, fresh, atol=1e-3, rtol=0)
    # Many branches through one slot-limited context: every row equals a fresh context's.
    lm2 = open_lm(pair.drafter, pair.shared_vocab, slots=2)
    rng = np.random.default_rng(0)
    for _ in range(12):
        seq = base + [int(t) for t in rng.integers(3, len(tok), size=int(rng.integers(1, 6)))]
        n = int(rng.integers(1, len(seq) - len(base) + 1))
        x = lm2.logits_for(seq, n)
        y = open_lm(pair.drafter, pair.shared_vocab, slots=1).logits_for(seq, n)
        assert torch.allclose(x, y, atol=1e-3, rtol=0)


def test_continuations_equal_one_position_more(pair):
    """The stability signal's batched pass (temporary sequences sharing the prefix's cells) is exact."""
    seq = pair.tokenizer(PROMPT)["input_ids"] + [7, 8]
    lm = open_lm(pair.drafter, pair.shared_vocab, extra_seqs=4)
    lm.logits_for(seq, 1)
    before = (lm.counters.tokens, [s.tokens for s in lm.slots])
    rows = lm.continuation_rows(seq, [3, 4, 5, 6])
    assert (lm.counters.tokens, [s.tokens for s in lm.slots]) == before  # the slots are untouched
    for j, t in enumerate([3, 4, 5, 6]):
        one = open_lm(pair.drafter, pair.shared_vocab).logits_for(seq + [t], 1)[0]
        assert torch.allclose(rows[j], one, atol=1e-3, rtol=0)


def _cfg(setup, out, **kw):
    _, manifest, gguf, _, v = setup
    base = {"manifest": manifest, "drafter": str(gguf), "verifier": str(v), "out": out, "backend": "causal-lm",
            "drafter_runtime": "llama-cpp", "policies": default_exploration(6, ks=(1, 3)), "max_new_tokens": 6,
            "edge_threads": 1, "timing_repeats": 1, "probes": False}
    base.update(kw)
    return CollectConfig(**base)


def test_cli_collect_with_llamacpp_drafter_records_the_runtime_and_replays(setup, pair, tmp_path):
    _, manifest, gguf, _, v = setup
    out = tmp_path / "tr"
    res = CliRunner().invoke(main, ["collect", str(manifest), "--backend", "causal-lm", "--drafter-runtime",
                                    "llama-cpp", "--drafter", str(gguf), "--verifier", str(v), "--out", str(out),
                                    "--max-new-tokens", "6", "--timing-repeats", "1", "--edge-threads", "1",
                                    "--limit", "2", "--signals", "stability:k=4,audio-shift"])
    assert res.exit_code == 0, res.output
    tr = load_trace(out)
    m = tr.manifest
    rt = m["drafter"]["runtime"]
    assert rt["name"] == "llama.cpp" and rt["version"] == llama_cpp.__version__ == "0.3.36"
    assert rt["gguf_sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert rt["quantisation"] == "F32" and rt["n_threads"] == 1 and m["drafter"]["dtype"] == "F32"
    assert m["hardware"]["edge"]["threads"] == 1 and "llama.cpp" in m["hardware"]["edge"]["runtime"]
    assert m["collection"]["identity"]["drafter_runtime"]["gguf_sha256"] == rt["gguf_sha256"]
    assert m["compute"]["drafter_tokens_per_node"] <= 1.3  # the cache is reused along the trie
    edge = tr.timings.filter(pl.col("side") == "edge")
    assert {"prefill", "decode"} <= set(edge["phase"].to_list()) and edge["threads"].to_list()[0] == 1
    assert tr.nodes["x_stability"].is_not_null().any() and tr.nodes["x_audio_shift"].is_not_null().any()
    # Explored policies replay from the trace exactly as they run live on the llama.cpp drafter.
    backend = CausalLMBackend(pair.tokenizer)
    utts = {u.utt_id: u for u in read_manifest(manifest)}
    pols = default_exploration(6)
    pols = pols[:3] + pols[3::9]
    for uid in tr.utterances["utt_id"]:
        sess = TrieSession(tr.nodes.filter(pl.col("utt_id") == uid), tr.modes)
        prep = backend.prepare(utts[uid], tr.modes)
        src = _source(pair, prep.cloud_prompts["audio"], prep.cloud_prompts["blind"], tr.modes)
        for pol in pols:
            assert run(sess, pol) == run(src, pol), pol.label
        edge_tokens = run(sess, drafter_only(6)).tokens
        assert edge_tokens == _reference_greedy(gguf, prep.edge_prompt, 6, pair.eos)


def test_probes_time_the_llamacpp_drafter(pair, monkeypatch):
    from sectrace.collect.probes import probe

    calls = []
    real = LlamaCppLM._decode

    def counting(self, items, want):
        calls.append(len(items))
        return real(self, items, want)

    monkeypatch.setattr(LlamaCppLM, "_decode", counting)
    rows = probe(pair.drafter, pair.shared_vocab, list(range(3, 13)), "edge", "cpu", 1, repeats=3, ctxs=(0,))
    assert sorted({r[2] for r in rows if r[1] == "prefill"}) == [10, 26, 58]
    assert sum(r[1] == "decode" for r in rows) == 3
    assert len(calls) >= 3 * 2 + 4 and 1 in calls  # every timed call ran llama.cpp (decode: one position)


def test_resume_and_shards_give_the_uninterrupted_trace(setup, tmp_path):
    whole = tmp_path / "whole"
    collect(_cfg(setup, whole), echo=lambda *a: None)
    part = tmp_path / "part"
    res = collect(_cfg(setup, part, stop_after=2), echo=lambda *a: None)
    assert not res["complete"]
    assert collect(_cfg(setup, part), echo=lambda *a: None)["complete"]

    def nodes(p):
        return load_trace(p).nodes.sort(["utt_id", "node_id"])

    assert nodes(part).equals(nodes(whole))
    for i in range(2):
        collect(_cfg(setup, tmp_path / f"s{i}", shard=(i, 2)), echo=lambda *a: None)
    r = CliRunner().invoke(main, ["trace", "merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out",
                                  str(tmp_path / "merged")])
    assert r.exit_code == 0, r.output
    assert nodes(tmp_path / "merged").equals(nodes(whole))


def test_a_changed_gguf_is_another_collection(setup, tmp_path):
    """The identity holds the GGUF's hash: new bytes at the same path never resume the old parts."""
    import shutil

    _, _, gguf, d, _ = setup
    path = tmp_path / "drafter.gguf"
    shutil.copy(gguf, path)
    out = tmp_path / "tr"
    assert not collect(_cfg(setup, out, drafter=str(path), stop_after=1), echo=lambda *a: None)["complete"]
    export_qwen2_gguf(d, path, "f16")  # the same model re-quantised, written over the file
    with pytest.raises(UserError, match="different command"):
        collect(_cfg(setup, out, drafter=str(path)), echo=lambda *a: None)


def test_refusals_are_one_sentence(setup, tmp_path):
    _, manifest, gguf, d, v = setup
    runner = CliRunner()

    def go(*args, drafter=gguf, verifier=v):
        return runner.invoke(main, ["collect", str(manifest), "--drafter", str(drafter), "--verifier", str(verifier),
                                    "--out", str(tmp_path / "x"), "--no-probes", *args])

    r = go("--backend", "causal-lm", "--drafter-runtime", "llama-cpp", "--signals", "mc-dropout")
    assert r.exit_code == 2 and "needs dropout in the drafter's graph" in r.output
    r = go("--drafter-runtime", "llama-cpp")  # the default backend is omni-thinker (audio in)
    assert r.exit_code == 2 and "text models only" in r.output
    r = go("--backend", "causal-lm")
    assert r.exit_code == 2 and "add --drafter-runtime llama-cpp" in r.output
    r = go("--backend", "causal-lm", "--drafter-runtime", "llama-cpp", drafter=d / "config.json")
    assert r.exit_code == 2 and "not a GGUF file" in r.output
    other_tok = make_tokenizer(tmp_path / "tok2", extra="completely different words here, zebra quartz xylophone")
    make_qwen2(tmp_path / "other", other_tok, seed=3)
    other = export_qwen2_gguf(tmp_path / "other", tmp_path / "other.gguf")
    r = go("--backend", "causal-lm", "--drafter-runtime", "llama-cpp", drafter=other)
    assert r.exit_code == 2 and "vocabulary differs from the verifier's tokenizer" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "x").exists()
    with pytest.raises(UserError, match="does not exist"):
        load_pair_llamacpp(str(tmp_path / "missing.gguf"), str(v))
