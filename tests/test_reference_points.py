"""The reference points beside Table 1: template captions from the true and a wrong emotion, and intervals.

Checks the corpus BLEU rebuilt from per-caption counts against pycocoevalcap's own scorer (weights =
repeated captions), the template captions' rules, and, on the bundled real trace, the standing table's
arithmetic: points inside their intervals, the paired difference of identical captions exactly 0, and the
true-emotion sentence above the wrong-emotion one.
"""

from __future__ import annotations

import shutil

import numpy as np
import polars as pl
import pytest

from sectrace.reports import reference_points as R
from sectrace.reports.quality import BLEU_COUNTS, bleu_count_columns


def _cooked(pairs):
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer, cook_test

    out = []
    for hyp, refs in pairs:
        s = BleuScorer(n=4)
        s.cook_append(None, refs)
        out.append((s.crefs[0], cook_test(hyp, s.crefs[0])))
    return out


PAIRS = [("the speaker sounds happy and bright", ["a happy speaker with a bright voice", "she sounds happy"]),
         ("he is calm", ["the man sounds calm and steady", "a calm voice"]),
         ("a sad and slow voice", ["a sad voice , slow and low", "the speaker sounds sad"]),
         ("angry", ["an angry man shouting", "the speaker sounds angry and loud"]),
         ("the speaker sounds sad and slow", ["the speaker sounds sad and slow", "a sad voice"])]


@pytest.mark.parametrize("weights", [[1, 1, 1, 1, 1], [2, 0, 1, 3, 1], [0, 0, 0, 4, 1], [1, 0, 0, 0, 0]])
def test_corpus_bleu_from_counts_is_pycocoevalcaps(weights):
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    cooked = _cooked(PAIRS)
    counts = pl.DataFrame(bleu_count_columns([c for _, c in cooked])).select(BLEU_COUNTS).to_numpy().astype(float)
    got = R.corpus_bleu(np.asarray(weights, float) @ counts)
    s = BleuScorer(n=4)
    s.crefs = [r for (r, _), w in zip(cooked, weights) for _ in range(w)]
    s.ctest = [c for (_, c), w in zip(cooked, weights) for _ in range(w)]
    want, _ = s.compute_score(option="closest", verbose=0)
    for n in range(4):
        if got[n] == 0:  # no n-gram of some order <= n matched: pycocoevalcap's 1e-15 guard leaves a trace
            assert want[n] < 1e-4
        else:
            assert got[n] == pytest.approx(want[n], rel=1e-12)
    assert got[0] > 0  # these captions do share words with their references


def test_reference_captions_follow_the_labels_and_are_deterministic():
    utt = pl.DataFrame({"utt_id": ["a", "b", "c", "d"], "emotion": ["hap", "sad", "neutral", None],
                        "references": [["x"]] * 4})
    refs = R.reference_captions(utt)
    again = R.reference_captions(utt)
    assert refs.equals(again)
    up = dict(refs.filter(pl.col("policy") == R.UPPER).select("utt_id", "caption").iter_rows())
    low = dict(refs.filter(pl.col("policy") == R.LOWER).select("utt_id", "caption").iter_rows())
    assert up == {"a": "The speaker sounds happy.", "b": "The speaker sounds sad.", "c": "The speaker sounds calm."}
    assert set(low) == {"a", "b", "c"}  # no label, no reference point
    used = {"The speaker sounds happy.", "The speaker sounds sad.", "The speaker sounds calm."}
    for u in low:
        assert low[u] != up[u] and low[u] in used  # a wrong emotion among the dataset's own classes
    # another seed may draw other wrong emotions, never the right one
    other = R.reference_captions(utt, seed=7).filter(pl.col("policy") == R.LOWER)
    assert all(c != up[u] for u, c in other.select("utt_id", "caption").iter_rows())
    assert R.reference_captions(utt.drop("emotion")) is None
    assert R.reference_captions(utt.with_columns(pl.lit("bored").alias("emotion"))) is None


def test_verdicts_need_the_interval_to_exclude_zero():
    assert R._verdict(0.5, 2.0) == "above" and R._verdict(-2.0, -0.5) == "below"
    assert R._verdict(-0.5, 2.0) == "tie" and R._verdict(-1e-12, 1e-12) == "tie"
    assert R._verdict(float("nan"), 1.0) is None


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer and METEOR need Java")
def test_standing_on_the_bundled_trace(tmp_path):
    from sectrace.api import simulate_trace
    from sectrace.reports.quality import score_captions
    from sectrace.trace import load_trace, sample_trace_path

    tr = load_trace(sample_trace_path())
    res = simulate_trace(sample_trace_path(), (), rtt="50ms", per_utterance=True)  # the two baselines
    q = score_captions(res, tr.utterances)
    refs = R.reference_captions(tr.utterances)
    # a policy whose captions ARE the wrong-emotion sentences: its paired difference is exactly 0, a tie
    copy = (refs.filter(pl.col("policy") == R.LOWER).with_columns(pl.lit("copy of lower").alias("policy"),
                                                                   pl.lit(True).alias("covered")))
    cols = ["policy", "utt_id", "caption", "covered"]
    both = pl.concat([res.select(cols), copy.select(cols)], how="vertical_relaxed")
    q2 = score_captions(both, tr.utterances)
    rq = score_captions(R.as_results(refs), tr.utterances)
    st = R.standing(both, q2, refs, rq)
    rows = {r["system"]: r for r in st.iter_rows(named=True)}
    assert list(rows) == [R.UPPER, "edge-only", "cloud-only", "copy of lower", R.LOWER]
    for r in rows.values():
        assert r["clips"] == 12
        for label in ("BLEU-4 ×100", "CIDEr-D ×100"):
            assert r[f"{label}_lo"] <= r[label] <= r[f"{label}_hi"]
    cp = rows["copy of lower"]
    assert cp["CIDEr-D ×100 − wrong emotion"] == 0 and cp["CIDEr-D ×100 vs wrong emotion"] == "tie"
    assert cp["CIDEr-D ×100"] == rows[R.LOWER]["CIDEr-D ×100"]
    # the point values are the policies' own Table 1 scores (×100)
    per = {r["policy"]: r for r in q.per_policy.iter_rows(named=True)}
    for pol in ("edge-only", "cloud-only"):
        assert rows[pol]["CIDEr-D ×100"] == pytest.approx(100 * per[pol]["cider_d"], rel=1e-12)
    # the label sentence beats the wrong one by more than resampling noise
    assert rows[R.UPPER]["CIDEr-D ×100 vs wrong emotion"] == "above"
    assert rows[R.LOWER]["CIDEr-D ×100 vs wrong emotion"] is None
