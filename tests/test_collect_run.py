"""`sectrace collect` end to end on tiny models: trace written, resumable, shardable, mergeable, clear errors."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from tiny_models import make_pair, make_qwen2, make_tokenizer  # noqa: E402

from sectrace.cli import main  # noqa: E402
from sectrace.collect.collector import CollectConfig, collect  # noqa: E402
from sectrace.explore import default_exploration  # noqa: E402
from sectrace.models.backends import CausalLMBackend  # noqa: E402
from sectrace.models.dataset import read_manifest  # noqa: E402
from sectrace.models.pair import load_pair  # noqa: E402
from sectrace.protocol import run  # noqa: E402
from sectrace.trace import TrieSession, load_trace  # noqa: E402

TEXTS = ["i cannot believe you did that", "that is wonderful news", "leave me alone", "fine, whatever"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("collect")
    tok, d, v = make_pair(root)
    rows = []
    for i, text in enumerate(TEXTS):
        wav = root / f"a{i}.wav"
        t = np.arange(int(22050 * 0.5)) / 22050
        sf.write(wav, (0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t)).astype(np.float32), 22050)
        rows.append({"utt_id": f"u{i}", "audio": wav.name, "references": [f"ref {i}", "another"],
                     "emotion": "angry", "text": text})
    manifest = root / "data.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root, manifest, d, v


def _cfg(setup, out, **kw):
    root, manifest, d, v = setup
    base = dict(manifest=manifest, drafter=str(d), verifier=str(v), out=out,
                policies=default_exploration(6, ks=(1, 3)), max_new_tokens=6, edge_threads=None,
                timing_repeats=1, probes=False)
    base.update(kw)
    return CollectConfig(**base)


def _live(info, prep, modes):
    """A live session on the models, built the way a collection builds it, for comparison with replays."""
    from sectrace.models.lm import CachedLM
    from sectrace.models.pair import PairSource

    d = CachedLM(info.drafter, info.shared_vocab, prep.edge_kwargs)
    vs = {m: CachedLM(info.verifier, info.shared_vocab, prep.cloud_kwargs.get(m)) for m in modes}
    return PairSource(d, prep.edge_prompt, vs, {m: prep.cloud_prompts[m] for m in modes}, info.eos)


def _nodes(path):
    return load_trace(path).nodes.sort(["utt_id", "node_id"])


def test_cli_collect_writes_a_trace_every_policy_replays(setup, tmp_path):
    root, manifest, d, v = setup
    out = tmp_path / "tr"
    res = CliRunner().invoke(main, ["collect", str(manifest), "--backend", "causal-lm", "--drafter", str(d),
                                    "--verifier", str(v), "--out",
                                    str(out), "--max-new-tokens", "6", "--timing-repeats", "1", "--edge-threads",
                                    "1", "--limit", "2"])
    assert res.exit_code == 0, res.output
    assert "tokens/node" in res.output
    tr = load_trace(out)
    m = tr.manifest
    assert tr.utterances.height == 2 and set(tr.modes) == {"audio", "blind"}
    assert m["shared_vocab_size"] == m["verifier"]["vocab_size"]
    assert m["compute"]["drafter_tokens_per_node"] <= 1.3
    assert {"prefill", "decode", "verify"} <= set(tr.timings["phase"].unique().to_list())
    assert set(tr.timings.filter(pl.col("phase") == "verify")["new_tokens"].to_list()) == set(range(1, 17))
    assert m["hardware"]["edge"]["cpu_cores_logical"] >= 1
    assert not (out.parent / "tr.parts").exists()
    # Explored policies replay from the written trace exactly as they run live on the models: same tokens,
    # same schedule, same counters (a sample of the exploration, every kind of policy in it).
    info = load_pair(str(d), str(v))
    backend = CausalLMBackend(info.tokenizer)
    utts = {u.utt_id: u for u in read_manifest(manifest)}
    pols = default_exploration(6)
    pols = pols[:3] + pols[3::9]
    for uid in tr.utterances["utt_id"]:
        sess = TrieSession(tr.nodes.filter(pl.col("utt_id") == uid), tr.modes)
        src = _live(info, backend.prepare(utts[uid], tr.modes), tr.modes)
        for pol in pols:
            assert run(sess, pol) == run(src, pol), pol.label
        # Captions decode from the trace's own vocabulary as the tokenizer decodes them.
        edge = run(sess, pols[0]).tokens
        assert tr.decode(edge) == info.tokenizer.decode([t for t in edge if t not in tr.eos_ids]).strip()
    # Rerunning the finished command does nothing.
    again = CliRunner().invoke(main, ["collect", str(manifest), "--backend", "causal-lm", "--drafter", str(d),
                                      "--verifier", str(v), "--out",
                                      str(out), "--max-new-tokens", "6", "--timing-repeats", "1", "--edge-threads",
                                      "1", "--limit", "2"])
    assert again.exit_code == 0 and "already complete" in again.output


def test_killed_run_resumes_to_the_uninterrupted_result(setup, tmp_path):
    whole = tmp_path / "whole"
    collect(_cfg(setup, whole))
    part = tmp_path / "part"
    res = collect(_cfg(setup, part, stop_after=2))
    assert not res["complete"] and len(list((tmp_path / "part.parts").glob("utt-*.json"))) == 2
    calls = []
    res = collect(_cfg(setup, part), progress_factory=lambda total, initial: calls.append(initial) or _Bar())
    assert res["complete"] and calls == [2]
    a, b = _nodes(whole), _nodes(part)
    assert a.equals(b)
    # A different command on the same partial run is refused.
    collect(_cfg(setup, tmp_path / "p2", stop_after=1))
    with pytest.raises(Exception, match="different command"):
        collect(_cfg(setup, tmp_path / "p2", max_new_tokens=5, policies=default_exploration(5, ks=(1,))))


class _Bar:
    def update(self, n):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def test_shards_merge_to_the_unsharded_trace(setup, tmp_path):
    whole = tmp_path / "whole"
    collect(_cfg(setup, whole))
    for i in range(2):
        collect(_cfg(setup, tmp_path / f"s{i}", shard=(i, 2)))
    res = CliRunner().invoke(main, ["trace", "merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out",
                                    str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    assert _nodes(tmp_path / "merged").equals(_nodes(whole))
    # A shard of another collection is refused.
    collect(_cfg(setup, tmp_path / "other", shard=(1, 2), max_new_tokens=5))
    res = CliRunner().invoke(main, ["trace", "merge", str(tmp_path / "s0"), str(tmp_path / "other"), "--out",
                                    str(tmp_path / "bad")])
    assert res.exit_code == 2 and "different collections" in res.output


def test_extend_adds_the_states_a_new_policy_needs(setup, tmp_path):
    from sectrace.gates import parse_policy

    base = tmp_path / "base"
    collect(_cfg(setup, base, policies=default_exploration(6, ks=(1,))))
    new = parse_policy("k=4 gate=margin:0.5 accept=rank:2 token-only", 6)
    tr = load_trace(base)
    misses = 0
    for uid in tr.utterances["utt_id"]:
        try:
            run(TrieSession(tr.nodes.filter(pl.col("utt_id") == uid), tr.modes), new)
        except Exception:
            misses += 1
    assert misses > 0
    collect(_cfg(setup, tmp_path / "ext", policies=[new], extend=base))
    ext = load_trace(tmp_path / "ext")
    assert ext.nodes.height > tr.nodes.height
    root, manifest, d, v = setup
    info = load_pair(str(d), str(v))
    backend = CausalLMBackend(info.tokenizer)
    utts = {u.utt_id: u for u in read_manifest(manifest)}
    for uid in ext.utterances["utt_id"]:
        sess = TrieSession(ext.nodes.filter(pl.col("utt_id") == uid), ext.modes)
        src = _live(info, backend.prepare(utts[uid], ext.modes), ext.modes)
        assert run(sess, new) == run(src, new)
        for pol in default_exploration(6, ks=(1,))[::4]:
            assert run(sess, pol) == run(src, pol), pol.label


def test_bad_inputs_are_clear_errors(setup, tmp_path):
    root, manifest, d, v = setup
    runner = CliRunner()

    def go(*args, man=manifest, drafter=d, verifier=v):
        return runner.invoke(main, ["collect", str(man), "--backend", "causal-lm", "--drafter", str(drafter),
                                    "--verifier", str(verifier),
                                    "--out", str(tmp_path / "x"), "--no-probes", *args])

    r = go(drafter=tmp_path / "missing")
    assert r.exit_code == 2 and "does not exist" in r.output
    other_tok = make_tokenizer(tmp_path / "tok2", extra="completely different words here, zebra quartz xylophone")
    make_qwen2(tmp_path / "other", other_tok, seed=3)
    r = go(verifier=tmp_path / "other")
    assert r.exit_code == 2 and "tokenizers differ" in r.output
    bad = tmp_path / "bad.jsonl"
    (tmp_path / "noise.wav").write_bytes(b"not audio at all")
    bad.write_text(json.dumps({"audio": "noise.wav", "references": ["r"], "text": "hello"}) + "\n")
    r = go(man=bad)
    assert r.exit_code == 2 and "cannot read audio" in r.output
    r = go(man=tmp_path / "nomanifest.csv")
    assert r.exit_code == 2 and "does not exist" in r.output
    assert "Traceback" not in r.output


def test_audio_loader_resamples_to_16k(setup):
    from sectrace.models.dataset import load_audio

    root = setup[0]
    x = load_audio(root / "a0.wav")
    assert x.dtype == np.float32 and abs(len(x) - 8000) <= 1


def test_csv_manifest_and_shard_parsing(tmp_path):
    from sectrace.errors import UserError
    from sectrace.models.dataset import parse_shard, read_manifest

    p = tmp_path / "m.csv"
    p.write_text("audio,reference,emotion\nx/a.wav,one || two,happy\nb.wav,three,\n")
    u = read_manifest(p)
    assert [x.utt_id for x in u] == ["a", "b"] and u[0].references == ["one", "two"] and u[1].emotion is None
    assert parse_shard("1/4", {}) == (1, 4)
    assert parse_shard(None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    with pytest.raises(UserError):
        parse_shard("4/4", {})
