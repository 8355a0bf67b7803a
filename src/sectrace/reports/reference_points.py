"""Where the captions stand: two reference points scored on the same clips, and intervals over clips.

A CIDEr-D of 0.02 means nothing alone. Two captions anyone could write without listening bracket it:
the *upper* reference states the clip's true emotion label in one fixed sentence, the *lower* one a
wrong emotion drawn at random (seeded by the clip). A policy whose captions do not beat the
wrong-emotion sentence carries no more than a wrong guess in the references' eyes; one near the
true-emotion sentence says the emotion about as well as a label does. Both are scored by the same
scorers, tokenizer and CIDEr-D document frequencies as the policies (reports.quality), on the
clips that have a label.

Intervals are percentile bootstraps over clips (simulate.metrics.bootstrap_weights): corpus BLEU-4 is
rebuilt from the per-caption counts of each resample exactly as pycocoevalcap computes it, CIDEr-D is
the mean over clips. The comparison with the lower reference is paired: one resample draws the same
clips for both, on the clips both captioned.
"""

from __future__ import annotations

import zlib

import numpy as np
import polars as pl

from ..simulate.metrics import bootstrap_weights
from .emotion import label_class
from .quality import BLEU_COUNTS, QualityResult

UPPER = "reference: true emotion (template)"
LOWER = "reference: wrong emotion (template)"
#: One fixed sentence, so the reference points measure the label, not a writer's style.
TEMPLATE = "The speaker sounds {emotion}."
#: The adjective each emotion class is written with in TEMPLATE.
ADJECTIVE = {"angry": "angry", "happy": "happy", "sad": "sad", "fearful": "afraid", "surprised": "surprised",
             "neutral": "calm", "disgusted": "disgusted"}
#: The columns shown with intervals, in the order :func:`_stats` computes them.
SHOWN = ("BLEU-4 ×100", "CIDEr-D ×100")
#: Differences (×100) no larger than this are no difference (float rounding of equal scores).
ZERO = 1e-9


def reference_captions(utterances: pl.DataFrame, seed: int = 0) -> pl.DataFrame | None:
    """Rows (utt_id, policy, caption) of the two reference points for every clip with a known emotion label;
    None when the dataset has no usable ``emotion`` column. The wrong emotion is drawn among the other classes
    the dataset's labels use (every class when it uses one), from a generator keyed by the seed and the clip."""
    if "emotion" not in utterances.columns:
        return None
    labelled = [(u, label_class(e)) for u, e in zip(utterances["utt_id"].to_list(), utterances["emotion"].to_list())]
    labelled = [(u, e) for u, e in labelled if e in ADJECTIVE]
    if not labelled:
        return None
    classes = sorted({e for _, e in labelled})
    if len(classes) < 2:
        classes = sorted(ADJECTIVE)
    rows = []
    for u, e in labelled:
        others = [c for c in classes if c != e]
        wrong = others[int(np.random.default_rng([seed, zlib.crc32(u.encode())]).integers(len(others)))]
        rows.append({"utt_id": u, "policy": UPPER, "caption": TEMPLATE.format(emotion=ADJECTIVE[e])})
        rows.append({"utt_id": u, "policy": LOWER, "caption": TEMPLATE.format(emotion=ADJECTIVE[wrong])})
    return pl.DataFrame(rows)


def as_results(captions: pl.DataFrame) -> pl.DataFrame:
    """The reference captions as results rows that reports.quality.score_captions scores like a policy's."""
    return captions.with_columns(pl.lit(True).alias("covered"))


def corpus_bleu(totals: np.ndarray) -> np.ndarray:
    """pycocoevalcap's corpus BLEU-1..4 from summed BLEU_COUNTS (shape (..., 10)), with its own guards, except
    that BLEU-n is 0 where no n-gram of some order ≤ n matched: the 1e-15 guard leaves a trace there (up to
    ~1e-5 for BLEU-3), not a score."""
    tiny, small = 1e-15, 1e-9
    testlen, reflen = totals[..., 0], totals[..., 1]
    guess, correct = totals[..., 2:6], totals[..., 6:10]
    prod = np.cumprod((correct + tiny) / (guess + small), axis=-1)
    bleu = prod ** (1.0 / np.arange(1, 5))
    ratio = (testlen + tiny) / (reflen + small)
    with np.errstate(divide="ignore", over="ignore"):
        bp = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    matched = np.minimum.accumulate(correct, axis=-1) > 0
    return np.where(matched, bleu * bp[..., None], 0.0)


def _captions_of(results: pl.DataFrame, policy: str, per_caption: pl.DataFrame) -> pl.DataFrame:
    """One scored caption per clip for a policy (its captions do not depend on the configuration)."""
    rows = (results.filter((pl.col("policy") == policy) & pl.col("covered") & pl.col("caption").is_not_null())
            .select("utt_id", "caption").unique(subset=["utt_id"], keep="first", maintain_order=True))
    return rows.join(per_caption, on=["utt_id", "caption"], how="inner").sort("utt_id")


def _stats(frame: pl.DataFrame, w: np.ndarray) -> np.ndarray:
    """(R, 2): corpus BLEU-4 and mean CIDEr-D (raw, not ×100) of the captions under resample weights w (R, clips)."""
    counts = frame.select(BLEU_COUNTS).to_numpy().astype(float)
    bleu4 = corpus_bleu(w @ counts)[:, 3]
    cider = (w @ frame["cider_d"].to_numpy()) / w.sum(axis=1)
    return np.stack([bleu4, cider], axis=1)


def standing(results: pl.DataFrame, quality: QualityResult, ref_captions: pl.DataFrame,
             ref_quality: QualityResult) -> pl.DataFrame:
    """Per policy and reference point: BLEU-4 and CIDEr-D (×100) with 95 % intervals over clips, and the paired
    difference from the wrong-emotion reference (its interval, and whether it is above, below or a tie).

    ``quality`` scored the policies' captions (``results``), ``ref_quality`` the reference points'
    (``ref_captions`` from :func:`reference_captions`, scored as :func:`as_results` rows)."""
    per_caption = pl.concat([quality.per_caption, ref_quality.per_caption], how="diagonal_relaxed").unique(
        subset=["utt_id", "caption"], keep="first", maintain_order=True)
    both = pl.concat([results.select("policy", "utt_id", "caption", "covered"),
                      as_results(ref_captions).select("policy", "utt_id", "caption", "covered")],
                     how="vertical_relaxed")
    lower = _captions_of(both, LOWER, per_caption)
    policies = [UPPER, *results["policy"].unique(maintain_order=True).to_list(), LOWER]
    rows = []
    for pol in policies:
        mine = _captions_of(both, pol, per_caption)
        if mine.height == 0:
            continue
        point, lo, hi = bootstrap_weights(mine.height, lambda w, f=mine: _stats(f, w))
        common = mine.join(lower.select("utt_id"), on="utt_id", how="inner")["utt_id"].to_list()
        a = mine.filter(pl.col("utt_id").is_in(common))
        b = lower.filter(pl.col("utt_id").is_in(common))
        if pol != LOWER and a.height:
            d, dlo, dhi = bootstrap_weights(a.height, lambda w, a=a, b=b: _stats(a, w) - _stats(b, w))
        else:
            d = dlo = dhi = np.full(2, np.nan)
        row = {"system": pol, "clips": mine.height}
        for i, label in enumerate(SHOWN):
            diff = f"{label} − wrong emotion"
            row.update({label: 100 * point[i], f"{label}_lo": 100 * lo[i], f"{label}_hi": 100 * hi[i],
                        diff: 100 * d[i], f"{diff}_lo": 100 * dlo[i], f"{diff}_hi": 100 * dhi[i],
                        f"{label} vs wrong emotion": _verdict(100 * dlo[i], 100 * dhi[i]) if pol != LOWER else None})
        rows.append(row)
    return pl.DataFrame(rows, strict=False)


def _verdict(lo: float, hi: float) -> str | None:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    return "above" if lo > ZERO else "below" if hi < -ZERO else "tie"
