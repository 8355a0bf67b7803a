"""Few-shot prompts: examples are other clips' references, never a scored clip's, and the trace records them."""

from __future__ import annotations

import json

import pytest

from sectrace.errors import UserError
from sectrace.models.backends import FEW_SHOT_HEADER, few_shot_examples, with_examples
from sectrace.models.dataset import Utterance


def _u(i, emotion, refs):
    return Utterance(f"u{i}", None, refs, emotion=emotion)


POOL = [_u(0, "happy", ["a cheerful voice", "she sounds glad"]), _u(1, "sad", ["a low, slow voice"]),
        _u(2, "sad", ["he sounds gloomy", "a cheerful voice"]), _u(3, "angry", ["a loud, sharp voice"]),
        _u(4, "happy", ["an upbeat tone"]), _u(5, "angry", ["he sounds annoyed"])]


def test_examples_never_come_from_a_scored_clip():
    scored = POOL[:2]
    ex = few_shot_examples(POOL, scored, 3)
    assert len(ex) == 3 and len(set(ex)) == 3
    forbidden = {r for u in scored for r in u.references}
    assert not forbidden & set(ex)  # "a cheerful voice" is u0's reference, so not even u2's copy of it is shown
    assert set(ex) <= {"he sounds gloomy", "a loud, sharp voice", "an upbeat tone", "he sounds annoyed"}
    # one per emotion in turn: three examples cover the three emotions left in the pool
    emo = {r: u.emotion for u in POOL for r in u.references}
    assert {emo[e] for e in ex} == {"happy", "sad", "angry"}
    assert few_shot_examples(POOL, scored, 3) == ex  # deterministic
    assert few_shot_examples(POOL, scored, 0) == []


def test_too_few_examples_is_one_clear_sentence():
    with pytest.raises(UserError, match="--few-shot 9 needs 9"):
        few_shot_examples(POOL, POOL[:2], 9)
    with pytest.raises(UserError, match="--few-shot-from"):
        few_shot_examples(POOL, POOL, 1)  # every clip is scored: nothing may be shown


def test_the_prompt_carries_the_examples_before_the_template():
    t = "Transcript: {transcript}\nDescribe the speaker's emotion in one sentence."
    p = with_examples(t, ["a", "b"])
    assert p.startswith(FEW_SHOT_HEADER) and p.endswith(t) and "- a\n- b\n" in p
    assert p.format(transcript="x").endswith("Transcript: x\nDescribe the speaker's emotion in one sentence.")
    assert with_examples(t, []) == t


def test_collect_with_few_shot_records_the_examples(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    sf = pytest.importorskip("soundfile")
    import numpy as np
    from tiny_models import make_pair

    from sectrace.collect.collector import CollectConfig, collect
    from sectrace.explore import default_exploration
    from sectrace.trace import load_trace

    tok, d, v = make_pair(tmp_path)
    rows = []
    for i, (text, emotion) in enumerate([("leave me alone", "angry"), ("that is wonderful", "happy"),
                                         ("i miss her", "sad"), ("fine", "neutral")]):
        wav = tmp_path / f"a{i}.wav"
        sf.write(wav, (0.3 * np.sin(np.arange(5000) / 20)).astype(np.float32), 22050)
        rows.append({"utt_id": f"u{i}", "audio": wav.name, "references": [f"reference {i} one", f"reference {i} two"],
                     "emotion": emotion, "text": text})
    manifest = tmp_path / "data.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    def run(out, **kw):
        cfg = CollectConfig(manifest=manifest, drafter=str(d), verifier=str(v), out=out, limit=2,
                            policies=default_exploration(4, ks=(1,)), max_new_tokens=4, edge_threads=None,
                            timing_repeats=1, probes=False, **kw)
        collect(cfg, echo=lambda *_: None)
        return load_trace(out)

    plain = run(tmp_path / "plain")
    fs = run(tmp_path / "fs", few_shot=2)
    prompt = fs.manifest["collection"]["identity"]["prompt"]
    assert prompt.startswith(FEW_SHOT_HEADER)
    shown = [line[2:] for line in prompt.splitlines() if line.startswith("- ")]
    assert len(shown) == 2 and all(s.startswith(("reference 2", "reference 3")) for s in shown)  # clips beyond --limit
    # the examples reach the models: every prompt is longer by the same number of tokens
    a, b = plain.utterances.sort("utt_id"), fs.utterances.sort("utt_id")
    grow = (b["edge_prompt_tokens"] - a["edge_prompt_tokens"]).to_list()
    assert grow[0] > 0 and len(set(grow)) == 1
    # resuming the same command keeps the same prompt (the examples are not drawn twice)
    again = run(tmp_path / "fs", few_shot=2)
    assert again.manifest["collection"]["identity"]["prompt"] == prompt
