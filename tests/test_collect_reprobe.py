"""Portable traces from `sectrace collect`, re-probing, probe load, and the transformers cache argument.

Tiny random models (tests/tiny_models.py), as in test_collect_run.py. What is checked: the trace stores its
dataset relative to itself with a content hash computed here by hand; a trace moved alone says what it needs
and finds it under --data; shards' content hashes add up to the unsharded one's; `collect --reprobe`
replaces the timings and hardware only, on a trace collected without probes; a busy machine during probes is
recorded and warned about; the KV cache goes to forward under the name the model takes (no FutureWarning).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")
pytest.importorskip("psutil")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from tiny_models import make_pair  # noqa: E402

from sectrace.cli import main  # noqa: E402
from sectrace.collect.collector import CollectConfig, collect, merge_traces  # noqa: E402
from sectrace.explore import default_exploration  # noqa: E402
from sectrace.trace import load_trace  # noqa: E402

TEXTS = ["i cannot believe you did that", "that is wonderful news", "leave me alone"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reprobe")
    _, d, v = make_pair(root)
    data = root / "data"
    data.mkdir()
    rows = []
    for i, text in enumerate(TEXTS):
        sf.write(data / f"a{i}.wav", (0.2 * np.sin(np.arange(8000) / (7.0 + i))).astype(np.float32), 16000)
        rows.append({"utt_id": f"u{i}", "audio": f"a{i}.wav", "references": [f"ref {i}"], "emotion": "sad",
                     "text": text})
    manifest = data / "set.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root, manifest, d, v, rows


def _collect(setup, out, **kw):
    root, manifest, d, v, _ = setup
    base = dict(manifest=manifest, drafter=str(d), verifier=str(v), out=out,
                policies=default_exploration(5, ks=(2,)), max_new_tokens=5, edge_threads=None, timing_repeats=1,
                probes=False)
    base.update(kw)
    return collect(CollectConfig(**base))


def _by_hand(rows) -> str:
    """The content hash recomputed from the manifest's JSON rows, independently of models.dataset."""
    total = 0
    for r in rows:
        canon = {"utt_id": r["utt_id"], "audio": r["audio"].rsplit("/", 1)[-1], "text": r["text"],
                 "references": r["references"], "emotion": r["emotion"]}
        blob = json.dumps(canon, sort_keys=True, ensure_ascii=False).encode()
        total += int.from_bytes(hashlib.sha256(blob).digest()[:16], "big")
    return f"sum128:{total % (1 << 128):032x}"


@pytest.fixture(scope="module")
def plain_trace(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("traces") / "t"
    _collect(setup, out)
    return out


def test_the_trace_records_its_dataset_relative_to_itself(setup, plain_trace):
    root, manifest, *_ , rows = setup
    ds = load_trace(plain_trace).manifest["dataset"]
    assert not ds["manifest"].startswith("/") and (plain_trace / ds["manifest"]).resolve() == manifest.resolve()
    assert ds["file"] == "set.jsonl" and ds["n_utterances"] == 3
    assert ds["content_sha"] == _by_hand(rows)


def test_a_trace_moved_alone_says_what_it_needs_and_finds_it_under_data(setup, plain_trace, tmp_path):
    from sectrace.models.dataset import locate_dataset

    root, manifest, *_ = setup
    moved = tmp_path / "elsewhere" / "deep" / "t"
    shutil.copytree(plain_trace, moved)
    tr = load_trace(moved)
    ids = tr.utterances["utt_id"].to_list()
    look = locate_dataset(tr.manifest["dataset"], tr.path, ids)
    assert not look.ok and "set.jsonl" in look.problem() and "--data" in look.problem()
    look = locate_dataset(tr.manifest["dataset"], tr.path, ids, data=manifest.parent)
    assert look.ok and look.found == manifest.parent / "set.jsonl" and [u.utt_id for u in look.utterances] == ids
    assert look.audio_missing == []
    # The same data moved together with the trace (same relative layout) is found with no flag at all.
    both = tmp_path / "both" / "x" / "y"
    shutil.copytree(plain_trace, both / "t")
    dest = (both / "t" / tr.manifest["dataset"]["manifest"]).resolve()
    shutil.copytree(manifest.parent, dest.parent)
    tr2 = load_trace(both / "t")
    found = locate_dataset(tr2.manifest["dataset"], tr2.path, ids).found
    assert found is not None and found.resolve() == dest and not str(dest).startswith(str(manifest.parent))
    # A manifest of the same name with other content is refused, saying so.
    other = tmp_path / "other"
    other.mkdir()
    changed = [json.loads(line) for line in manifest.read_text().splitlines()]
    changed[1]["text"] = "something else entirely"
    (other / "set.jsonl").write_text("\n".join(json.dumps(r) for r in changed) + "\n")
    look = locate_dataset(tr.manifest["dataset"], tr.path, ids, data=other)
    assert not look.ok and "other content" in look.problem()


def test_shards_content_hashes_add_up(setup, plain_trace, tmp_path):
    for i in range(2):
        _collect(setup, tmp_path / f"s{i}", shard=(i, 2))
    merge_traces([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged" / "m")
    merged = load_trace(tmp_path / "merged" / "m").manifest["dataset"]
    whole = load_trace(plain_trace).manifest["dataset"]
    assert merged["content_sha"] == whole["content_sha"]
    assert (tmp_path / "merged" / "m" / merged["manifest"]).resolve() == setup[1].resolve()


def test_reprobe_replaces_only_the_timings_and_hardware(setup, plain_trace, tmp_path):
    root, manifest, d, v, _ = setup
    before = load_trace(plain_trace)
    assert before.timings.height == 0
    out = tmp_path / "re"
    r = CliRunner().invoke(main, ["collect", "--reprobe", str(plain_trace), "--drafter", str(d), "--verifier", str(v),
                                  "--out", str(out), "--timing-repeats", "1", "--edge-threads", "1"])
    assert r.exit_code == 0, r.output
    assert "timing probes, edge" in r.stderr and "timing probes, cloud" in r.stderr
    assert "loading the drafter" in r.stderr
    assert "CPUs meanwhile" in r.stdout
    after = load_trace(out)
    t = after.timings
    assert {"prefill", "decode", "verify"} <= set(t["phase"].to_list())
    assert set(t.filter(pl.col("phase") == "verify")["new_tokens"].to_list()) == set(range(1, 17))
    assert (t["seconds"] > 0).all() and t["seconds"].is_finite().all()
    # The probes ran on the first utterance's prompt: its prefill rows carry that prompt's length, and the
    # lengths 16 and 48 tokens beyond it (the merged pass of a session-opening or stateless verify call).
    assert set(t.filter(pl.col("phase") == "prefill")["new_tokens"].to_list()) == \
        {int(before.utterances[f"{side}_prompt_tokens"][0]) + m for side in ("edge", "cloud") for m in (0, 16, 48)}
    assert after.nodes.equals(before.nodes) and after.utterances.equals(before.utterances)
    m0, m1 = before.manifest, after.manifest
    assert m1["collection"] == m0["collection"] and m1["exploration"] == m0["exploration"]
    load = m1["hardware"]["probe_load"]
    assert load["cpus"] >= 1 and load["other_processes_cores"] >= 0 and isinstance(load["busy"], bool)
    assert m1["hardware"]["reprobed"]["previous_timings"] == 0 and m1["hardware"]["edge"]["threads"] == 1
    # The copy's dataset path was rebased: it still names the same manifest.
    assert (out / m1["dataset"]["manifest"]).resolve() == manifest.resolve()
    # In place, on the copy: the trace keeps its place and gets fresh timings.
    r = CliRunner().invoke(main, ["collect", "--reprobe", str(out), "--drafter", str(d), "--verifier", str(v),
                                  "--timing-repeats", "1", "--edge-threads", "1"])
    assert r.exit_code == 0, r.output
    assert load_trace(out).manifest["hardware"]["reprobed"]["previous_timings"] == t.height


def test_reprobe_refuses_clearly(setup, plain_trace, tmp_path):
    root, manifest, d, v, _ = setup
    alone = tmp_path / "a" / "b" / "alone"  # deeper than the original: its relative path leads nowhere
    shutil.copytree(plain_trace, alone)
    r = CliRunner().invoke(main, ["collect", "--reprobe", str(alone), "--drafter", str(d), "--verifier", str(v)])
    assert r.exit_code == 2 and "--data" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["collect", "--reprobe", str(alone), "--drafter", str(d), "--verifier", str(v),
                                  "--out", str(plain_trace)])
    assert r.exit_code == 2 and "already exists" in r.output
    r = CliRunner().invoke(main, ["collect", "--drafter", str(d), "--verifier", str(v)])
    assert r.exit_code == 2 and "MANIFEST" in r.output


def test_a_busy_machine_is_recorded_and_warned_about():
    from sectrace.collect.probes import LoadMonitor, load_warning

    spin = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<3: pass"])
    try:
        import time

        time.sleep(0.3)
        with LoadMonitor() as mon:
            time.sleep(1.5)  # this process idles; the spinner (another process) uses a whole core
    finally:
        spin.wait()
    res = mon.result
    assert res["other_processes_cores"] >= 0.5 and res["busy"]
    assert 0 <= res["other_processes_share"] <= 1.05 and res["seconds"] >= 1.4
    text = load_warning(res)
    assert "--reprobe" in text and f"of {res['cpus']} CPUs" in text
    assert load_warning({**res, "busy": False}) is None and load_warning(None) is None


def test_the_cache_goes_under_the_name_forward_takes(setup):
    import torch

    from sectrace.models.lm import CachedLM, cache_argument
    from sectrace.models.pair import load_pair

    class New(torch.nn.Module):
        def forward(self, input_ids=None, cache=None, use_cache=None):
            return None

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            return None

    assert cache_argument(New()) == "cache" and cache_argument(Old()) == "past_key_values"
    _, _, d, v, _ = setup
    pair = load_pair(str(d), str(v))
    lm = CachedLM(pair.drafter, pair.shared_vocab)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers 5.24 warns on past_key_values
        a = lm.logits_for([3, 4, 5, 6], 1)
        b = lm.logits_for([3, 4, 5, 6, 7], 2)  # a cached step
    fresh = CachedLM(pair.drafter, pair.shared_vocab).logits_for([3, 4, 5, 6, 7], 2)
    assert torch.allclose(b, fresh, atol=1e-9) and torch.allclose(a[0], fresh[0], atol=1e-9)


def test_collect_says_what_it_does_off_a_terminal(setup, tmp_path):
    root, manifest, d, v, _ = setup
    r = CliRunner().invoke(main, ["collect", str(manifest), "--backend", "causal-lm", "--drafter", str(d),
                                  "--verifier", str(v), "--out", str(tmp_path / "t"), "--max-new-tokens", "4",
                                  "--timing-repeats", "1", "--edge-threads", "1", "--limit", "2",
                                  "--policy", "k=1 gate=never", "--policy", "k=2 gate=always accept=top1 token-only"])
    assert r.exit_code == 0, r.output
    err = r.stderr.splitlines()
    assert any(ln.startswith("loading the drafter") for ln in err) and any("models loaded in" in ln for ln in err)
    assert sum("timing probes, edge: context" in ln for ln in err) == 3  # one line per probed context
    assert any(ln.startswith("utterance 1/2 u0:") for ln in err)
    assert any(ln.startswith("utterance 2/2 u1:") for ln in err)
    info = CliRunner().invoke(main, ["trace", "info", str(tmp_path / "t")])
    assert "while probing" in info.output and "found at" in info.output


needs_tools = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                                 reason="espeak-ng and sox are not installed (apt-get install -y espeak-ng sox)")


@needs_tools
def test_demo_collect_records_a_recipe_that_remakes_its_dataset(setup, tmp_path, monkeypatch):
    """`sectrace demo collect` on tiny models (weights and the front end stood in): the trace it writes remakes its
    exact dataset elsewhere (`sectrace demo data`), found by validate's resolution after the trace moved."""
    from types import SimpleNamespace

    import sectrace.demo.frontend as frontend
    import sectrace.demo.weights as weights
    from sectrace.models.dataset import locate_dataset

    _, _, d, v, _ = setup
    for side, path in (("drafter", d), ("verifier", v)):
        (path / "sectrace-weights.json").write_text(json.dumps({"name": f"tiny {side} (GGUF)", "source": "tests"}))
    monkeypatch.setattr(weights, "require", lambda role: {"drafter": d, "verifier": v}[role])
    seen = []

    def fake_describe(path):  # the front end's text, made up from the clip's name (Whisper is not needed here)
        seen.append(path)
        return SimpleNamespace(audio_text=f"Transcript: \"{Path(path).stem.split('_')[1]} voice\"")

    monkeypatch.setattr(frontend, "describe", fake_describe)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo-trace"
    r = CliRunner().invoke(main, ["demo", "collect", "--out", str(out), "--work", "work", "--clips", "2",
                                  "--no-probes", "--max-new-tokens", "4",
                                  "--policy", "k=1 gate=never;k=2 gate=always accept=top1 token-only"])
    assert r.exit_code == 0, r.output
    tr = load_trace(out)
    ds = tr.manifest["dataset"]
    assert tr.manifest["drafter"]["name"] == "tiny drafter" and ds["recipe"]["utt_ids"] == ["0000_neutral",
                                                                                              "0001_happy"]
    assert ds["recipe"]["texts"]["0001_happy"] == 'Transcript: "happy voice"' and len(seen) == 2
    moved = tmp_path / "x" / "y" / "moved"
    shutil.copytree(out, moved)
    r = CliRunner().invoke(main, ["demo", "data", "remade", "--trace", str(moved)])
    assert r.exit_code == 0, r.output
    look = locate_dataset(ds, moved, tr.utterances["utt_id"].to_list(), data=tmp_path / "remade")
    assert look.ok and look.found == tmp_path / "remade" / "collect.jsonl" and not look.audio_missing
    assert (tmp_path / "remade" / "collect.jsonl").read_text() == (tmp_path / "work" / "collect.jsonl").read_text()
    assert len(seen) == 2  # remaking used the recorded texts, not the front end
