"""The data behind the report's acceptance figures: acceptance by draft position, the accepted-length
histogram, and mean acceptance length, latency and speedup against k.

Every number is read from the results, never recomputed from the trace: the per-position rates,
the means and their bootstrap intervals are the summary columns of ``simulate.metrics`` (a sweep
summary carries them; `simulate`'s per-utterance rows are summarised by ``simulate.results.summarise``,
the same function `simulate --summary-out` writes with), and the histogram is read from the rows'
``accepted_per_pos`` counts. Plain polars tables, so tests check them without drawing.
"""

from __future__ import annotations

import polars as pl

from ..errors import UserError
from ..simulate.results import summarise
from .inputs import results_kind
from .style import BASELINES

#: Metrics the figures draw with intervals (summarise bootstraps only these, to stay fast on large results).
CI_METRICS = ("mean_acceptance_length", "draft_acceptance_rate", "latency_s", "speedup_vs_edge", "speedup_vs_cloud")
#: Policy knobs besides k that tell two families of policies apart (a family: the same knobs, k varying).
FAMILY_KNOBS = ("gate", "accept", "bonus", "privacy", "cloud_cache", "adaptive")
#: Columns of :func:`versus_k`, each with ``_lo``/``_hi`` when the results carry intervals.
VERSUS_K = ("mean_acceptance_length", "draft_acceptance_rate", "latency_s", "speedup_vs_edge", "speedup_vs_cloud")


def summary(results: pl.DataFrame) -> pl.DataFrame:
    """One row per (policy, configuration) with the acceptance metrics: a sweep summary as it is, `simulate`'s
    per-utterance rows summarised as `simulate --summary-out` does (bootstrap intervals for :data:`CI_METRICS`)."""
    if results_kind(results) == "sweep":
        return results
    return summarise(results, ci=CI_METRICS)


def _hybrids(summ: pl.DataFrame) -> pl.DataFrame:
    """Rows of policies that draft and ask the cloud to verify (baselines out), every configuration."""
    if "k" not in summ.columns:
        return summ.clear()
    return summ.filter(~pl.col("policy").is_in(list(BASELINES)) & (pl.col("k") >= 1))


def by_position(summ: pl.DataFrame) -> pl.DataFrame:
    """``policy, k, position, rate``: the results' ``acceptance_rate_per_pos`` (Σ verify calls that accepted
    draft position i / Σ verify calls) for positions 1..k, one row per position. Counts do not depend on
    the configuration, so the first configuration's row of each policy is read."""
    empty = pl.DataFrame(schema={"policy": pl.String, "k": pl.Int64, "position": pl.Int64, "rate": pl.Float64})
    if "acceptance_rate_per_pos" not in summ.columns:
        return empty
    hyb = _hybrids(summ).filter(pl.col("acceptance_rate_per_pos").is_not_null())
    if hyb.height == 0:
        return empty
    first = hyb.unique(subset=["policy"], keep="first", maintain_order=True)
    rows = [{"policy": r["policy"], "k": int(r["k"]), "position": i + 1, "rate": float(v)}
            for r in first.iter_rows(named=True) for i, v in enumerate(r["acceptance_rate_per_pos"])]
    return pl.DataFrame(rows, schema=empty.schema) if rows else empty


def accepted_histogram(results: pl.DataFrame) -> pl.DataFrame:
    """``policy, k, accepted, calls, share``: verify calls that accepted exactly ``accepted`` drafted tokens
    (0..k), and their share of the policy's verify calls, over its covered utterances.

    Read from the per-utterance rows: acceptance is a prefix, so ``accepted_per_pos[i]`` counts the calls
    that accepted at least i + 1 tokens, and exactly j = (at least j) − (at least j + 1), with "at least 0"
    every verify call. Empty for results without per-utterance rows (a sweep summary)."""
    empty = pl.DataFrame(schema={"policy": pl.String, "k": pl.Int64, "accepted": pl.Int64, "calls": pl.Int64,
                                 "share": pl.Float64})
    need = {"accepted_per_pos", "verify_calls", "k", "config"}
    if results_kind(results) == "sweep" or not need <= set(results.columns):
        return empty
    first_cfg = results.group_by("policy", maintain_order=True).agg(pl.col("config").min())
    rows = (results.join(first_cfg, on=["policy", "config"], how="semi")
            .filter(pl.col("covered") & (pl.col("k") >= 1) & ~pl.col("policy").is_in(list(BASELINES))))
    out = []
    for (policy,), g in rows.group_by(["policy"], maintain_order=True):
        k = int(g["k"][0])
        calls = int(g["verify_calls"].sum())
        if calls == 0:
            continue
        per_pos = g["accepted_per_pos"].list.to_array(k).to_numpy().sum(axis=0) if k else []
        at_least = [calls, *(int(x) for x in per_pos), 0]
        for j in range(k + 1):
            n = at_least[j] - at_least[j + 1]
            out.append({"policy": policy, "k": k, "accepted": j, "calls": n, "share": n / calls})
    return pl.DataFrame(out, schema=empty.schema) if out else empty


def family_label(row: dict, varying: list[str]) -> str:
    """A family in words: its gate and acceptance rule, and whichever other knob varies in the results."""
    bits = [f"gate={row['gate']}", f"accept={row['accept']}"]
    for knob in varying:
        if knob in ("gate", "accept"):
            continue
        v = row.get(knob)
        if knob == "bonus":
            bits.append("bonus" if v else "no bonus")
        elif knob == "adaptive":
            bits.append("fixed k" if v is None or v != v else f"adaptive {v:g}")
        else:
            bits.append(str(v))
    return " ".join(bits)


def versus_k(summ: pl.DataFrame) -> pl.DataFrame:
    """``family, policy, config, k`` and :data:`VERSUS_K` with their intervals, for families (policies equal in
    every knob but k) that the results hold at two k or more, sorted by family, configuration and k. Empty
    when no family varies k: then there is nothing to draw against k."""
    hyb = _hybrids(summ)
    knobs = [c for c in FAMILY_KNOBS if c in hyb.columns]
    if hyb.height == 0 or not {"gate", "accept"} <= set(knobs):
        return pl.DataFrame()
    varying = [c for c in knobs if hyb[c].n_unique() > 1]
    fam = [family_label(r, varying) for r in hyb.select(knobs).iter_rows(named=True)]
    cols = [c for m in VERSUS_K for c in (m, f"{m}_lo", f"{m}_hi") if c in hyb.columns]
    df = hyb.with_columns(pl.Series("family", fam)).select("family", "policy", "config", "k", *cols)
    many = df.group_by("family").agg(pl.col("k").n_unique().alias("n_k")).filter(pl.col("n_k") >= 2)["family"]
    df = df.filter(pl.col("family").is_in(many.to_list()))
    order = {f: i for i, f in enumerate(dict.fromkeys(fam))}
    return df.sort(pl.col("family").replace_strict(order, return_dtype=pl.Int64), "config", "k")


def acceptance_data(results: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, str]:
    """(by position, accepted histogram, versus k, note): what the acceptance section draws; the note says
    why a part is missing (old results that lack a column)."""
    try:
        summ = summary(results)
    except UserError as exc:
        empty = pl.DataFrame()
        return empty, empty, empty, str(exc)
    return by_position(summ), accepted_histogram(results), versus_k(summ), ""
