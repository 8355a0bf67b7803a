"""score_captions' own logic, without Java: which captions are scored, each distinct caption once, per-caption
scores and per-policy corpus scores against pycocoevalcap's standard scorers, and what is left out.

The two Java programs are replaced by stand-ins with the same contract: a tokenizer that lower-cases and drops
punctuation (one call, every distinct text), and a METEOR that, like the jar, turns each (hypothesis,
references) pair into a statistics line and scores a list of lines as segments plus a pooled corpus score
(here: unigram matches against the best reference, F = 2m / (h + r), pooled as 2Σm / Σ(h + r), so the corpus
score is not the mean of the segments). BLEU, ROUGE-L and CIDEr-D are pycocoevalcap's own Python scorers, as
in production. The real jars are exercised by tests/test_quality.py (the Chinese test runs METEOR itself, the
standard-way tests run the PTB tokenizer and METEOR against pycocoevalcap's wrappers).
"""

from __future__ import annotations

import re
from collections import Counter

import polars as pl
import pytest

from sectrace.errors import UserError
from sectrace.reports import quality

pytest.importorskip("pycocoevalcap")

SPICE = "SPICE: unavailable (pycocoevalcap's SPICE downloads Stanford CoreNLP models at run time)"
PTB = "Stanford PTBTokenizer 3.4.1 (pycocoevalcap), lower-cased, punctuation removed"
COLUMNS = ["utt_id", "caption", "tokenized", "bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider_d",
           *quality.BLEU_COUNTS, "emotion_consistency", "emotion_named", "emotion_target_from"]

REFS = {
    "u1": ["The speaker sounds angry and sharp.", "He is clearly irritated, his voice loud and tense."],
    "u2": ["She sounds cheerful and bright.", "A happy voice, warm and lively."],
    "u3": ["The voice is low and sad, close to tears.", "She sounds gloomy and slow."],
    # References but no caption anywhere: its references still count in CIDEr-D's document frequencies.
    "u4": ["A calm and steady voice.", "He speaks calmly, without hurry."],
}
# u1 has three distinct captions, u2 two, u3 one: CIDEr-D's rounds over an utterance's captions must cope.
CAPS = {
    "A": {"u1": "He sounds angry, and his voice is sharp.", "u2": "She sounds sad and slow.",
          "u3": "The voice is low and sad."},
    "B": {"u1": "The speaker sounds angry and tense.", "u2": "She sounds cheerful and warm.",
          "u3": "The voice is low and sad."},
    "C": {"u1": "A loud, tense voice.", "u2": "She sounds cheerful and warm.", "u3": "The voice is low and sad."},
}


def tok(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


class FakeMeteor:
    """METEOR's contract (statistics per segment, then segments and a pooled corpus score) in a few lines."""

    def __init__(self):
        self.stats_calls, self.evaluate_calls = [], []

    @staticmethod
    def _best(hyp: str, refs: list[str]) -> tuple[int, int, int]:
        h = hyp.split()
        best = max(((sum((Counter(h) & Counter(r.split())).values()), len(r.split())) for r in refs),
                   key=lambda mr: (mr[0], -mr[1]))
        return best[0], len(h), best[1]

    @classmethod
    def line(cls, hyp: str, refs: list[str]) -> str:
        return " ".join(str(x) for x in cls._best(hyp, refs))

    def stats(self, hyp: str, refs: list[str]) -> str:
        assert isinstance(hyp, str) and refs and all(isinstance(r, str) for r in refs)
        self.stats_calls.append((hyp, list(refs)))
        return self.line(hyp, refs)

    @staticmethod
    def segment(m, h, r) -> float:
        return 2 * m / (h + r) if h + r else 0.0

    def evaluate(self, stats: list[str]) -> tuple[float, list[float]]:
        assert stats, "an empty EVAL: the jar answers nothing, and score_captions' wrapper raises"
        self.evaluate_calls.append(list(stats))
        rows = [tuple(int(x) for x in s.split()) for s in stats]
        pooled = 2 * sum(m for m, _, _ in rows) / sum(h + r for _, h, r in rows)
        return pooled, [self.segment(*row) for row in rows]

    def expected(self, pairs) -> tuple[float, list[float]]:
        """What the jar-like METEOR gives these (tokenised hypothesis, tokenised references) pairs."""
        rows = [self._best(h, rs) for h, rs in pairs]
        return 2 * sum(m for m, _, _ in rows) / sum(h + r for _, h, r in rows), [self.segment(*r) for r in rows]


@pytest.fixture
def fakes(monkeypatch):
    seen = {"ptb": [], "meteor": [], "m": FakeMeteor()}

    def ptb(texts, jar_dir):
        seen["ptb"].append((list(texts), jar_dir))
        return [tok(t) for t in texts]

    def meteor(jar_dir, language):
        seen["meteor"].append((jar_dir, language))
        return seen["m"]

    monkeypatch.setattr(quality, "ptb_tokenize", ptb)
    monkeypatch.setattr(quality, "_meteor", meteor)
    return seen


def _utts(refs=REFS, emotions=None):
    emotions = emotions or {"u1": "angry", "u2": "happy"}
    return pl.DataFrame({"utt_id": list(refs), "references": list(refs.values()),
                         "emotion": [emotions.get(u) for u in refs]},
                        schema={"utt_id": pl.Utf8, "references": pl.List(pl.Utf8), "emotion": pl.Utf8})


def _results(caps=CAPS, trace="t"):
    rows = []
    for pol, cs in caps.items():
        for rtt in (0.02, 0.1):  # two network configurations: a policy's captions count once
            for u, c in cs.items():
                rows.append({"trace": trace, "policy": pol, "rtt_s": rtt, "utt_id": u, "covered": True, "caption": c,
                             "exact_match_cloud": float(c == CAPS["B"].get(u))})
    return pl.DataFrame(rows)


def _standard(gts_utts, caps_by_utt):
    """pycocoevalcap's scorers called the standard way on one policy's tokenised captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {u: [tok(r) for r in REFS[u]] for u in gts_utts}
    res = {u: [tok(caps_by_utt[u]) if u in caps_by_utt else ""] for u in gts_utts}
    sub = {u: gts[u] for u in caps_by_utt}
    bleu, bleu_each = Bleu(4).compute_score(sub, {u: res[u] for u in caps_by_utt}, verbose=0)
    rouge, rouge_each = Rouge().compute_score(sub, {u: res[u] for u in caps_by_utt})
    # CIDEr-D's document frequencies come from every utterance's references (u4's too, captioned "" here).
    _, cider_all = Cider().compute_score(gts, res)
    cider_each = [c for u, c in zip(sorted(gts), cider_all) if u in caps_by_utt]
    return bleu, bleu_each, rouge, rouge_each, cider_each


def test_every_distinct_caption_is_scored_once_as_the_standard_scorers_score_it(fakes, capsys):
    ticks = []
    q = quality.score_captions(_results(), _utts(), progress=ticks.append)
    assert ticks == [0.2, 0.5, 0.8, 1.0]
    assert capsys.readouterr().out == ""  # the scorers' verbose output would garble the report command's
    assert q.tokenizer == PTB and q.notes == [SPICE]  # every utterance in the results has references
    # One tokenizer run over every distinct reference and caption, with the jar pycocoevalcap ships.
    distinct = sorted({r for rs in REFS.values() for r in rs} | {c for cs in CAPS.values() for c in cs.values()})
    assert fakes["ptb"] == [(distinct, quality._coco() / "tokenizer")]
    assert fakes["meteor"] == [(quality._coco() / "meteor", "en")]
    # Distinct (utterance, caption) pairs, in order of first appearance, each sent to METEOR once.
    pairs = list(dict.fromkeys((u, c) for cs in CAPS.values() for u, c in cs.items()))
    assert len(pairs) == 6 and q.per_caption.columns == COLUMNS
    assert list(zip(q.per_caption["utt_id"], q.per_caption["caption"])) == pairs
    gts = {u: [tok(r) for r in rs] for u, rs in REFS.items()}
    assert fakes["m"].stats_calls == [(tok(c), gts[u]) for u, c in pairs]
    per = {(r["utt_id"], r["caption"]): r for r in q.per_caption.iter_rows(named=True)}
    pols = {r["policy"]: r for r in q.per_policy.iter_rows(named=True)}
    assert list(pols) == ["A", "B", "C"] and q.per_policy["trace"].to_list() == ["t"] * 3
    assert q.per_policy.columns == ["trace", "policy", "n_scored", "bleu1", "bleu2", "bleu3", "bleu4", "meteor",
                                    "rouge_l", "cider_d", "emotion_consistency", "emotion_named", "agree_cloud_exact"]
    for pol, caps in CAPS.items():
        bleu, bleu_each, rouge, rouge_each, cider_each = _standard(sorted(REFS), caps)
        m_corpus, m_each = fakes["m"].expected([(tok(caps[u]), gts[u]) for u in sorted(caps)])
        for i, u in enumerate(sorted(caps)):
            row = per[(u, caps[u])]
            assert row["tokenized"] == tok(caps[u])
            got = [row[f"bleu{n + 1}"] for n in range(4)] + [row["meteor"], row["rouge_l"], row["cider_d"]]
            want = [bleu_each[n][i] for n in range(4)] + [m_each[i], rouge_each[i], cider_each[i]]
            assert got == pytest.approx(want, rel=1e-12, abs=1e-15), (pol, u)
        got = pols[pol]
        assert got["n_scored"] == 3
        assert [got[f"bleu{n + 1}"] for n in range(4)] == pytest.approx(bleu, rel=1e-12), pol  # corpus BLEU
        assert got["meteor"] == pytest.approx(m_corpus, rel=1e-12) and got["meteor"] != pytest.approx(
            sum(m_each) / 3, rel=1e-6), pol  # the jar's pooled corpus score, not the mean of segments
        assert got["rouge_l"] == pytest.approx(rouge, rel=1e-12)
        assert got["cider_d"] == pytest.approx(sum(cider_each) / 3, rel=1e-12)
    # Each policy's corpus METEOR is one EVAL of its own captions' statistics (after one of all the pairs).
    ev = fakes["m"].evaluate_calls
    assert len(ev) == 4 and ev[0] == [FakeMeteor.line(tok(c), gts[u]) for u, c in pairs]
    assert [sorted(e) for e in ev[1:]] == [sorted(FakeMeteor.line(tok(cs[u]), gts[u]) for u in cs)
                                           for cs in CAPS.values()]
    # u1 is angry (label), u2 happy (label), u3 has no label and its references say sad: A says "sad" for u2,
    # C's u1 names no emotion at all.
    assert {p: r["emotion_consistency"] for p, r in pols.items()} == pytest.approx({"A": 2 / 3, "B": 1.0, "C": 2 / 3})
    assert {p: r["emotion_named"] for p, r in pols.items()} == pytest.approx({"A": 1.0, "B": 1.0, "C": 2 / 3})
    assert per[("u3", CAPS["A"]["u3"])]["emotion_target_from"] == "references"
    assert {p: r["agree_cloud_exact"] for p, r in pols.items()} == pytest.approx({"A": 1 / 3, "B": 1.0, "C": 2 / 3})


def test_what_is_left_out_is_left_out_and_said_so(fakes):
    """Uncovered rows, rows without a caption, and utterances without (non-blank) references are not scored; a
    policy's captions count once per utterance, the first one met; each (trace, policy) is its own row."""
    refs = {**REFS, "u5": ["", "   "]}  # only blank references: none
    extra = pl.DataFrame([
        {"trace": "t", "policy": "A", "rtt_s": 0.3, "utt_id": "u1", "covered": False, "caption": "Uncovered noise."},
        {"trace": "t", "policy": "A", "rtt_s": 0.3, "utt_id": "u2", "covered": True, "caption": None},
        {"trace": "t", "policy": "A", "rtt_s": 0.3, "utt_id": "u5", "covered": True, "caption": "Blank refs."},
        {"trace": "t", "policy": "B", "rtt_s": 0.3, "utt_id": "u6", "covered": True, "caption": "Not in the trace."},
        # A later configuration of B captions u1 differently: B's score keeps the first caption it met.
        {"trace": "t", "policy": "B", "rtt_s": 0.3, "utt_id": "u1", "covered": True, "caption": "Angry, angry, angry."},
    ])
    other = _results({"A": CAPS["A"]}, trace="t2")  # the same policy name in another trace: a row of its own
    res = pl.concat([_results(), extra, other], how="diagonal_relaxed")
    q = quality.score_captions(res, _utts(refs))
    assert q.notes == [SPICE, "2 utterance(s) have no reference and are left out of reference metrics"]
    scored = {c for cs in CAPS.values() for c in cs.values()} | {"Angry, angry, angry."}
    assert fakes["ptb"][0][0] == sorted({r for u in REFS for r in REFS[u]} | scored)
    assert set(q.per_caption["caption"]) == scored and q.per_caption.height == 7
    assert q.per_policy.select("trace", "policy", "n_scored").rows() == [("t", "A", 3), ("t", "B", 3),
                                                                          ("t", "C", 3), ("t2", "A", 3)]
    first = quality.score_captions(_results(), _utts())
    for key in (("t", "A"), ("t", "B"), ("t", "C"), ("t2", "A")):
        got = q.per_policy.filter((pl.col("trace") == key[0]) & (pl.col("policy") == key[1])).row(0, named=True)
        want = first.per_policy.filter(pl.col("policy") == key[1]).row(0, named=True)
        for k in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider_d", "emotion_consistency"):
            assert got[k] == pytest.approx(want[k], rel=1e-12), (key, k)
    # grouping by policy only pools the traces: A's rows from t and t2 are one row with one caption per utterance
    by_pol = quality.score_captions(res, _utts(refs), group_by=("policy", "no-such-column"))
    assert by_pol.per_policy.columns[:2] == ["policy", "n_scored"]
    assert by_pol.per_policy.select("policy", "n_scored").rows() == [("A", 3), ("B", 3), ("C", 3)]


def test_a_policy_with_one_caption_is_scored_against_the_closest_reference_length(fakes):
    """BLEU's brevity penalty uses the reference length closest to the caption's (pycocoevalcap's option), also for
    a policy that captioned one utterance, where BleuScorer's own default would average the references' lengths."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    cap = "She sounds angry and sharp."  # 5 words; u1's references have 6 and 9
    res = pl.DataFrame([{"trace": "t", "policy": "D", "utt_id": "u1", "covered": True, "caption": cap}])
    q = quality.score_captions(res, _utts())
    bleu, bleu_each, *_ = _standard(sorted(REFS), {"u1": cap})
    got = q.per_policy.row(0, named=True)
    assert got["n_scored"] == 1 and [got[f"bleu{n + 1}"] for n in range(4)] == pytest.approx(bleu, rel=1e-12)
    assert q.per_caption.select("bleu1", "bleu2", "bleu3", "bleu4").row(0) == pytest.approx(
        [b[0] for b in bleu_each], rel=1e-12)
    avg = BleuScorer(n=4)
    avg += (tok(cap), [tok(r) for r in REFS["u1"]])
    assert avg.compute_score(option="average", verbose=0)[0][0] != pytest.approx(bleu[0], rel=1e-6)


def test_nothing_covered_scores_nothing(fakes):
    res = _results().with_columns(covered=pl.lit(False))
    q = quality.score_captions(res, _utts())
    assert q.per_caption.height == 0 and q.per_policy.height == 0 and fakes["m"].evaluate_calls == []
    assert fakes["ptb"][0][0] == sorted({r for rs in REFS.values() for r in rs})  # the references alone


def test_chinese_captions_are_tokenised_by_character_and_scored_with_meteor_other(fakes, monkeypatch):
    refs = {"z1": ["她听起来很生气。"], "z2": ["他很高兴，语气轻快。", "他听起来很开心"]}
    utts = pl.DataFrame({"utt_id": list(refs), "references": list(refs.values()), "emotion": ["angry", None]})
    caps = {"a": {"z1": "她很生气。", "z2": "他很高兴。"}, "b": {"z1": "她很平静。", "z2": "他难过。"}}
    res = pl.DataFrame([{"trace": "t", "policy": p, "utt_id": u, "covered": True, "caption": c}
                        for p, cs in caps.items() for u, c in cs.items()])
    q = quality.score_captions(res, utts)
    assert fakes["ptb"] == [] and fakes["meteor"] == [(quality._coco() / "meteor", "other")]
    assert q.tokenizer == "character-level (Chinese)"
    assert q.notes == [SPICE, ("Chinese captions: character-level tokens; METEOR runs with -l other (exact matches "
                               "only, no stemming or synonyms)")]
    assert q.per_caption["tokenized"].to_list() == [quality.char_tokens(c) for cs in caps.values() for c in cs.values()]
    assert fakes["m"].stats_calls[0] == ("她 很 生 气", ["她 听 起 来 很 生 气"])
    assert fakes["m"].stats_calls[1] == ("他 很 高 兴", ["他 很 高 兴 语 气 轻 快", "他 听 起 来 很 开 心"])
    # z1's label is angry; z2 has none and its references say happy: a names both, b neither
    assert q.per_policy.select("policy", "emotion_consistency").rows() == [("a", 1.0), ("b", 0.0)]


def test_refusals_come_before_any_work(fakes):
    res = _results().with_columns(caption=pl.lit(None, pl.Utf8))
    with pytest.raises(UserError, match="no caption text"):
        quality.score_captions(res, _utts())
    # one caption is enough to go on
    some = _results().with_columns(caption=pl.when(pl.col("policy") == "A").then(pl.col("caption")))
    assert quality.score_captions(some, _utts()).per_policy["policy"].to_list() == ["A"]
    with pytest.raises(UserError, match="no reference captions"):
        quality.score_captions(_results(), _utts({u: [" "] for u in REFS}))
    assert fakes["ptb"][1:] == [] and fakes["meteor"] == [(quality._coco() / "meteor", "en")]
