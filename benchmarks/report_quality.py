"""Caption metrics on a sweep: each distinct caption scored once vs pycocoevalcap called per policy.

Usage: PYTHONPATH=src python benchmarks/report_quality.py RESULTS.parquet TRACE [--naive-policies N]
Prints rows, policies, distinct captions, seconds for the cached path, and seconds for the standard
per-policy path on N policies (extrapolated to all), plus the largest difference between the two.
"""

from __future__ import annotations

import argparse
import time

import polars as pl

from sectrace.reports.quality import score_captions
from sectrace.trace import load_trace


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("trace")
    ap.add_argument("--naive-policies", type=int, default=5)
    a = ap.parse_args()
    res = pl.read_parquet(a.results)
    tr = load_trace(a.trace)
    t0 = time.perf_counter()
    q = score_captions(res, tr.utterances)
    cached = time.perf_counter() - t0
    pols = q.per_policy["policy"].to_list()
    print(f"rows {res.height}, policies {len(pols)}, distinct (utterance, caption) pairs {q.per_caption.height}")
    print(f"cached path: {cached:.1f} s")

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs = dict(zip(tr.utterances["utt_id"].to_list(), tr.utterances["references"].to_list()))
    t0 = time.perf_counter()
    worst = 0.0
    meteor = Meteor()
    for pol in pols[:a.naive_policies]:
        sub = res.filter((pl.col("policy") == pol) & pl.col("covered")).unique(subset=["utt_id"], keep="first")
        tok = PTBTokenizer()
        gts = tok.tokenize({u: [{"caption": r} for r in refs[u]] for u in sub["utt_id"].to_list()})
        hyp = tok.tokenize({u: [{"caption": c}] for u, c in zip(sub["utt_id"].to_list(), sub["caption"].to_list())})
        b, _ = Bleu(4).compute_score(gts, hyp, verbose=0)
        m, _ = meteor.compute_score(gts, hyp)
        r, _ = Rouge().compute_score(gts, hyp)
        c, _ = Cider().compute_score(gts, hyp)
        got = q.per_policy.filter(pl.col("policy") == pol).row(0, named=True)
        worst = max(worst, *(abs(x - got[k]) for x, k in zip([*b, m, r], ["bleu1", "bleu2", "bleu3", "bleu4",
                                                                           "meteor", "rouge_l"])))
        if sub.height == tr.utterances.height:  # CIDEr-D document frequencies match only on full coverage
            worst = max(worst, abs(c - got["cider_d"]))
    naive = time.perf_counter() - t0
    n = min(a.naive_policies, len(pols))
    print(f"standard per-policy path: {naive:.1f} s for {n} policies, ~{naive / n * len(pols):.0f} s for all")
    print(f"largest difference between the two: {worst:.2e}")


if __name__ == "__main__":
    main()
