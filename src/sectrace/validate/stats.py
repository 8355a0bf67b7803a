"""The simulator's error over repeated live runs: medians, bias, bootstrap intervals, the noise floor, the targets.

A single live run carries the machine's noise (a caption's identical edge-only runs differed by up to
19 % on the development VM), so `validate --repeats N` runs every cell (utterance × policy × RTT) N times
and compares the simulator with the *median* of the cell's runs. The noise floor is measured from the
same repeats: how far a cell's runs lie from their median (the median absolute deviation, relative),
which is the error no simulator could remove from one run.

Intervals are percentile bootstraps (``scipy.stats.bootstrap``, 95 %, fixed seed): a condition's
(policy × RTT) over its utterances, each utterance being the median of its repeats; the whole run's
over its cells. A median of three repeats is too coarse to bootstrap within a cell, so repeats enter
through each cell's median and its deviation.
"""

from __future__ import annotations

import numpy as np
import polars as pl

#: What the live validation aims at (issue 16): the median |error| over cells, and each condition's mean signed error.
TARGETS = {"median_ape_latency": 0.02, "median_ape_ttft": 0.05, "abs_bias_latency": 0.02}
CONFIDENCE = 0.95
RESAMPLES = 2000
CELL = ["rtt_s", "policy", "utt_id"]
CONDITION = ["rtt_s", "policy"]


def cells(df: pl.DataFrame) -> pl.DataFrame:
    """Per cell (RTT × policy × utterance): the median of its repeats' live latency and TTFT, the simulator's
    signed error of that median (simulated / live − 1), and the repeats' spread around their median.

    Only runs whose caption equals the replay are timed (the others did different work)."""
    ok = df.filter(pl.col("caption_match"))
    med = ok.group_by(CELL, maintain_order=True).agg(
        repeats=pl.len(), latency_s=pl.col("latency_s").median(), ttft_s=pl.col("ttft_s").median(),
        predicted_latency_s=pl.col("predicted_latency_s").first(), predicted_ttft_s=pl.col("predicted_ttft_s").first(),
        spread=(pl.col("latency_s") / pl.col("latency_s").median() - 1).abs().median(),
        spread_ttft=(pl.col("ttft_s") / pl.col("ttft_s").median() - 1).abs().median())
    return med.with_columns(
        error_latency=pl.col("predicted_latency_s") / pl.col("latency_s") - 1,
        error_ttft=pl.col("predicted_ttft_s") / pl.col("ttft_s") - 1,
        spread=pl.when(pl.col("repeats") > 1).then("spread"),  # one run has no spread to measure
        spread_ttft=pl.when(pl.col("repeats") > 1).then("spread_ttft"))


def bootstrap_ci(x, statistic) -> tuple[float | None, float | None]:
    """A percentile-bootstrap 95 % interval of ``statistic`` (a numpy reduction taking ``axis``) over ``x``;
    (None, None) for fewer than two values, which have no spread to resample."""
    from scipy.stats import bootstrap

    x = np.asarray([v for v in x if v is not None and np.isfinite(v)], dtype=float)
    if len(x) < 2:
        return None, None
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    kw = dict(confidence_level=CONFIDENCE, n_resamples=RESAMPLES, method="percentile")
    try:
        res = bootstrap((x,), statistic, rng=np.random.default_rng(0), **kw)
    except TypeError:  # scipy < 1.15 names the generator random_state
        res = bootstrap((x,), statistic, random_state=np.random.default_rng(0), **kw)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _median_abs(x, axis=-1):
    return np.median(np.abs(x), axis=axis)


def conditions(cell: pl.DataFrame) -> pl.DataFrame:
    """Per condition (RTT × policy), over its utterances: live and simulated latency (means of the cells),
    the median |error|, the bias (mean signed error) with its interval, the same for TTFT, and the noise floor."""
    rows = []
    for key, g in cell.group_by(CONDITION, maintain_order=True):
        e, et = g["error_latency"].to_numpy(), g["error_ttft"].to_numpy()
        lo, hi = bootstrap_ci(e, np.mean)
        alo, ahi = bootstrap_ci(e, _median_abs)
        rows.append({"rtt_s": key[0], "policy": key[1], "utterances": g.height, "repeats": int(g["repeats"].min()),
                     "latency_s": g["latency_s"].mean(), "predicted_latency_s": g["predicted_latency_s"].mean(),
                     "median_ape_latency": float(np.median(np.abs(e))), "median_ape_latency_ci": [alo, ahi],
                     "bias_latency": float(np.mean(e)), "bias_latency_ci": [lo, hi],
                     "ttft_s": g["ttft_s"].mean(), "predicted_ttft_s": g["predicted_ttft_s"].mean(),
                     "median_ape_ttft": float(np.median(np.abs(et))), "bias_ttft": float(np.mean(et)),
                     "noise": g["spread"].median()})
    return pl.DataFrame(rows, infer_schema_length=None)


def targets(cell: pl.DataFrame, cond: pl.DataFrame) -> dict:
    """Each target of :data:`TARGETS`: the value, its interval, met (the value) and whether the whole interval
    meets it too. The medians are over every cell; the bias target must hold for every condition."""
    out = {}
    for name, col in (("median_ape_latency", "error_latency"), ("median_ape_ttft", "error_ttft")):
        e = cell[col].drop_nulls().to_numpy()
        value = float(np.median(np.abs(e))) if len(e) else None
        lo, hi = bootstrap_ci(e, _median_abs)
        out[name] = {"target": TARGETS[name], "value": value, "ci": [lo, hi],
                     "met": value is not None and value <= TARGETS[name],
                     "ci_within": hi is not None and hi <= TARGETS[name],
                     "over": "cells (utterance × policy × RTT), each the median of its repeats"}
    t = TARGETS["abs_bias_latency"]
    worst = None
    if cond.height:
        worst = cond.with_columns(a=pl.col("bias_latency").abs()).sort("a", descending=True).row(0, named=True)
    cis = cond["bias_latency_ci"].to_list() if cond.height else []
    out["abs_bias_latency"] = {
        "target": t, "value": None if worst is None else abs(worst["bias_latency"]),
        "worst": None if worst is None else {"rtt_s": worst["rtt_s"], "policy": worst["policy"],
                                             "bias": worst["bias_latency"], "ci": worst["bias_latency_ci"]},
        "met": worst is not None and abs(worst["bias_latency"]) <= t,
        "ci_within": bool(cis) and all(c[0] is not None and -t <= c[0] and c[1] <= t for c in cis),
        "over": "each condition (policy × RTT): the mean over its utterances, interval over utterances"}
    return out


def noise(cell: pl.DataFrame) -> dict:
    """The noise floor from repeats: the median over cells of the repeats' relative deviation from their
    median, with its interval over cells; None without repeats."""
    s = cell["spread"].drop_nulls().to_numpy() if "spread" in cell.columns else np.array([])
    if not len(s):
        return {"noise_repeats": None, "noise_repeats_ci": [None, None], "noise_repeats_max": None}
    lo, hi = bootstrap_ci(s, np.median)
    return {"noise_repeats": float(np.median(s)), "noise_repeats_ci": [lo, hi], "noise_repeats_max": float(s.max())}
