"""Audio backends on tiny random models: Qwen2.5-Omni thinker and Qwen2-Audio, with generated audio."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")

import polars as pl  # noqa: E402
from tiny_models import make_audio_tokenizer, make_thinker, tone  # noqa: E402

from sectrace.models.audio import AudioChatBackend, load_feature_extractor  # noqa: E402
from sectrace.models.dataset import Utterance  # noqa: E402
from sectrace.models.lm import CachedLM  # noqa: E402
from sectrace.models.pair import PairSource, load_pair  # noqa: E402
from sectrace.protocol import drafter_only, lossless, run  # noqa: E402
from sectrace.trace import TrieRecorder  # noqa: E402


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
    root = tmp_path_factory.mktemp("omni")
    tok = make_audio_tokenizer(root / "tok")
    make_thinker(root / "drafter", tok, seed=1)
    make_thinker(root / "verifier", tok, seed=2, layers=3)
    wavs = []
    for i, (secs, f) in enumerate([(1.3, 220.0), (2.2, 330.0)]):
        p = root / f"a{i}.wav"
        sf.write(p, tone(secs, f, 22050), 22050)  # not 16 kHz: the loader resamples
        wavs.append(p)
    info = load_pair(str(root / "drafter"), str(root / "verifier"), backend="omni-thinker")
    fe = load_feature_extractor(str(root / "drafter"))
    backend = AudioChatBackend("omni-thinker", info.tokenizer, info.verifier, fe)
    return root, info, backend, wavs


def _source(info, prep, modes=("audio", "blind")):
    d = CachedLM(info.drafter, info.shared_vocab, prep.edge_kwargs)
    vs = {m: CachedLM(info.verifier, info.shared_vocab, prep.cloud_kwargs[m]) for m in modes}
    return PairSource(d, prep.edge_prompt, vs, {m: prep.cloud_prompts[m] for m in modes}, info.eos)


def _independent_inputs(root, wav_path, n_audio: int | None):
    """The verifier's generate() inputs built here, not by the backend: the chat prompt written out as text and
    tokenized in one go, audio read and resampled to 16 kHz with scipy, features from the checkpoint's own
    WhisperFeatureExtractor (padded to 30 s, mask over the real frames)."""
    from math import gcd

    import numpy as np
    from scipy.signal import resample_poly
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    from sectrace.models.audio import DEFAULT_INSTRUCTION, OMNI_SYSTEM

    tok = AutoTokenizer.from_pretrained(root / "verifier")
    audio = "" if n_audio is None else "<|audio_bos|>" + "<|AUDIO|>" * n_audio + "<|audio_eos|>"
    text = (f"<|im_start|>system\n{OMNI_SYSTEM}<|im_end|>\n<|im_start|>user\n{audio}{DEFAULT_INSTRUCTION}<|im_end|>\n"
            "<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if n_audio is None:
        return ids, {}
    data, sr = sf.read(str(wav_path), dtype="float32")
    g = gcd(sr, 16000)
    wav = resample_poly(data, 16000 // g, sr // g).astype(np.float32)
    f = WhisperFeatureExtractor.from_pretrained(root / "verifier")(wav, sampling_rate=16000, return_attention_mask=True,
                                                                   padding="max_length", return_tensors="pt")
    return ids, {"input_features": f["input_features"].to(torch.float64), "feature_attention_mask": f["attention_mask"]}


@pytest.mark.parametrize("mode", ["audio", "blind"])
def test_thinker_always_escalate_top1_equals_verifier_generate(omni, mode):
    root, info, backend, wavs = omni
    prep = backend.prepare(Utterance("u", wavs[1], ["r"]), ("audio", "blind"))
    # 2.2 s at 16 kHz = 220 mel frames -> 110 after the stride-2 conv -> 55 after stride-2 pooling
    n_audio = 55 if mode == "audio" else None
    ref_ids, ref_kwargs = _independent_inputs(root, wavs[1], n_audio)
    assert prep.cloud_prompts[mode] == ref_ids
    assert prep.edge_prompt == _independent_inputs(root, wavs[1], 55)[0]
    assert prep.edge_prompt.count(backend.audio_id) == 55
    assert backend.audio_id not in prep.cloud_prompts["blind"]
    src = _source(info, prep)
    privacy = "features" if mode == "audio" else "token-only"
    max_new = 10
    ids = torch.tensor([ref_ids])
    gen = info.verifier.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new, **ref_kwargs)
    expect = gen[0, ids.shape[1]:].tolist()
    for k in (1, 4):
        out = run(TrieRecorder(src, (mode,)), lossless(k, max_new_tokens=max_new, privacy=privacy))
        assert out.tokens == expect
    assert run(TrieRecorder(src, (mode,)), drafter_only(max_new)).tokens != expect


def test_thinker_cached_steps_equal_recompute_and_audio_matters(omni):
    """Tolerance 1e-9 on float64: cached 3-D rope positions after crops equal a fresh full pass."""
    root, info, backend, wavs = omni
    prep = backend.prepare(Utterance("u", wavs[1], ["r"]), ("audio",))
    base = prep.edge_prompt
    lm = CachedLM(info.drafter, info.shared_vocab, prep.edge_kwargs)
    for seq in (base + [5, 6, 7, 8], base + [5, 6, 30], base + [5, 6, 7, 8, 9], base + [5]):
        got = lm.logits_for(seq, 2)
        fresh = CachedLM(info.drafter, info.shared_vocab, prep.edge_kwargs).logits_for(seq, 2)
        assert torch.allclose(got, fresh, atol=1e-9, rtol=0)
    # Another utterance's audio gives other logits: the features really reach the model.
    other = backend.prepare(Utterance("v", wavs[0], ["r"]), ("audio",))
    a = CachedLM(info.drafter, info.shared_vocab, other.edge_kwargs).logits_for(other.edge_prompt, 1)
    b = CachedLM(info.drafter, info.shared_vocab, {}).logits_for(other.edge_prompt, 1)
    assert not torch.allclose(a, b)


def test_thinker_collect_end_to_end_replays(omni, tmp_path):
    from click.testing import CliRunner

    from sectrace.cli import main
    from sectrace.explore import default_exploration
    from sectrace.trace import TrieSession, load_trace

    root, info, backend, wavs = omni
    man = tmp_path / "m.jsonl"
    man.write_text("".join(json.dumps({"audio": str(w), "references": ["calm"], "emotion": "neutral"}) + "\n"
                           for w in wavs))
    out = tmp_path / "tr"
    r = CliRunner().invoke(main, ["collect", str(man), "--drafter", str(root / "drafter"), "--verifier",
                                  str(root / "verifier"), "--out", str(out), "--max-new-tokens", "5",
                                  "--timing-repeats", "1", "--edge-threads", "1"])
    assert r.exit_code == 0, r.output
    tr = load_trace(out)
    assert tr.manifest["backend"] == "omni-thinker"
    u = tr.utterances.sort("utt_id")
    assert u["audio_seconds"].to_list() == pytest.approx([1.3, 2.2], abs=1e-3)
    assert (u["cloud_prompt_tokens"] > u["blind_prompt_tokens"]).all()
    # Replays from the written trace equal live runs on the models: tokens, schedule and counters
    # (a sample of the exploration: baselines, then every 9th policy).
    from sectrace.models.dataset import read_manifest

    utts = {x.utt_id: x for x in read_manifest(man)}
    assert set(utts) == set(u["utt_id"].to_list())
    pols = default_exploration(5)
    pols = pols[:3] + pols[3::9]
    for uid in u["utt_id"]:
        sess = TrieSession(tr.nodes.filter(pl.col("utt_id") == uid), tr.modes)
        src = _source(info, backend.prepare(utts[uid], tr.modes), tr.modes)
        for pol in pols:
            assert run(sess, pol) == run(src, pol), pol.label


def test_qwen2_audio_lossless(tmp_path):
    from tiny_models import make_qwen2_audio

    tok = make_audio_tokenizer(tmp_path / "tok")
    make_qwen2_audio(tmp_path / "d", tok, seed=1)
    make_qwen2_audio(tmp_path / "v", tok, seed=2)
    sf.write(tmp_path / "a.wav", tone(1.5, 250.0), 16000)
    info = load_pair(str(tmp_path / "d"), str(tmp_path / "v"), backend="qwen2-audio")
    be = AudioChatBackend("qwen2-audio", info.tokenizer, info.verifier, load_feature_extractor(str(tmp_path / "d")))
    prep = be.prepare(Utterance("u", tmp_path / "a.wav", ["r"]), ("audio", "blind"))
    src = _source(info, prep)
    for mode, privacy in (("audio", "features"), ("blind", "token-only")):
        out = run(TrieRecorder(src, (mode,)), lossless(3, max_new_tokens=8, privacy=privacy))
        ids = torch.tensor([prep.cloud_prompts[mode]])
        gen = info.verifier.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=8, **prep.cloud_kwargs[mode])
        assert out.tokens == gen[0, ids.shape[1]:].tolist()
    a = CachedLM(info.verifier, info.shared_vocab, prep.cloud_kwargs["audio"]).logits_for(prep.edge_prompt, 1)
    b = CachedLM(info.verifier, info.shared_vocab, {}).logits_for(prep.edge_prompt, 1)
    assert not torch.allclose(a, b)  # the features reach the model
