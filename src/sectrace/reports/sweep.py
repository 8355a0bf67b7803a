"""Reports from `sectrace sweep` summaries: one row per (policy, configuration), no per-utterance rows.

A sweep keeps means and percentiles, not captions, so reference metrics and latency distributions
are out of reach; the Pareto quality axis is agreement with the cloud-only caption (similarity =
1 − token edit distance, and exact match), the same numbers `simulate` reports. A summary that
carries them (``similarity_cloud``/``exact_match_cloud``) is read as it is; otherwise they are
computed by replaying each policy on the trace, which must be the trace the sweep ran on: the
replay's coverage and caption lengths are checked against the summary's.
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl

from ..errors import UserError
from ..protocol import cloud_only
from ..simulate import Replayer, similarity

_AGREE = (("agree_cloud_similarity", ("agree_cloud_similarity", "similarity_cloud")),
          ("agree_cloud_exact", ("agree_cloud_exact", "exact_match_cloud")))


def sweep_points(summary: pl.DataFrame) -> pl.DataFrame:
    """The summary in policy_points' shape: OET, OTPS and the agreement columns under the report's names.

    OTPS = (tokens − 1) / OET from the means equals policy_points' ratio of sums, since every mean
    is over the same covered utterances. Columns the summary does not have are null; every other
    column of the summary is kept (the interactive view shows them on hover)."""
    df = summary
    for want, names in _AGREE:
        have = next((n for n in names if n in df.columns), None)
        df = df.with_columns((pl.col(have) if have else pl.lit(None, pl.Float64)).cast(pl.Float64).alias(want))
    if "audio_bytes_up" not in df.columns:
        df = df.with_columns(pl.lit(None, pl.Float64).alias("audio_bytes_up"))
    oet = pl.col("latency_s") - pl.col("ttft_s")
    return df.with_columns(oet.alias("oet_s"), ((pl.col("n_tokens") - 1) / oet).alias("otps"),
                           pl.col("covered").cast(pl.Int64), pl.col("utterances").cast(pl.Int64))


def has_agreement(points: pl.DataFrame) -> bool:
    return "agree_cloud_similarity" in points.columns and points["agree_cloud_similarity"].drop_nulls().len() > 0


def _adaptive(label: str):
    m = re.search(r"\badaptive=([0-9.eE+-]+)", label)
    return float(m.group(1)) if m else None


def sweep_agreement(trace, summary: pl.DataFrame, gates=None, notes: list | None = None) -> pl.DataFrame:
    """Per policy: exact-match share and mean similarity to the cloud-only caption over the covered utterances,
    by replaying the sweep's policies on ``trace`` (learned gates only from files in ``gates``).

    The replay must cover the utterances the sweep covered and give captions of the lengths it
    reports; otherwise this is another trace and a UserError says so."""
    from .privacy import rebuild_policies

    max_new = int(trace.manifest["decoding"].get("max_new_tokens", 64))
    keys = [c for c in ("policy", "k", "gate", "accept", "bonus", "privacy", "cloud_cache", "adaptive",
                        "max_new_tokens") if c in summary.columns]
    rows = summary.select(*keys, "covered", "utterances", "n_tokens").unique(subset=["policy"], maintain_order=True)
    if "max_new_tokens" not in rows.columns:  # older summaries: the trace's decoding limit, as sweep used
        rows = rows.with_columns(pl.lit(max_new).alias("max_new_tokens"))
    if "adaptive" not in rows.columns:  # older summaries: read it off the label (Policy.label writes it)
        rows = rows.with_columns(pl.col("policy").map_elements(_adaptive, return_dtype=pl.Float64).alias("adaptive"))
    missing = [c for c in ("k", "gate", "accept", "bonus", "cloud_cache") if c not in rows.columns]
    if missing:
        raise UserError(f"the sweep summary lacks the column {missing[0]!r}, so its policies cannot be replayed; "
                        "give the --out file of `sectrace sweep` as written")
    pols, why = rebuild_policies(rows, gates)
    if notes is not None:
        notes.extend(why)
    rp = Replayer(trace)
    ref = rp.replay(cloud_only(max_new)).runs
    out = []
    for r in rows.iter_rows(named=True):
        pol = pols.get(r["policy"])
        if pol is None:
            continue
        runs = rp.replay(pol).runs
        got = [x for x in runs if x is not None]
        mean_tokens = float(np.mean([len(x.tokens) for x in got])) if got else float("nan")
        if len(got) != r["covered"] or len(runs) != r["utterances"] or (
                got and abs(mean_tokens - r["n_tokens"]) > 1e-6 * max(1.0, r["n_tokens"])):
            raise UserError(f"replaying {r['policy']!r} on {trace.path} covers {len(got)}/{len(runs)} utterances with "
                            f"{mean_tokens:.3g} tokens per caption, where the sweep has {r['covered']}/"
                            f"{r['utterances']} and {r['n_tokens']:.3g}; give the trace the sweep ran on (--trace)")
        pairs = [(a.tokens, b.tokens) for a, b in zip(runs, ref) if a is not None and b is not None]
        out.append({"policy": r["policy"],
                    "agree_cloud_exact": float(np.mean([a == b for a, b in pairs])) if pairs else None,
                    "agree_cloud_similarity": float(np.mean([similarity(a, b) for a, b in pairs])) if pairs else None})
    return pl.DataFrame(out, schema={"policy": pl.Utf8, "agree_cloud_exact": pl.Float64,
                                     "agree_cloud_similarity": pl.Float64})


def attach_agreement(points: pl.DataFrame, agreement: pl.DataFrame) -> pl.DataFrame:
    """Replace the points' agreement columns by ``agreement`` (per policy)."""
    return points.drop("agree_cloud_exact", "agree_cloud_similarity", strict=False).join(
        agreement, on="policy", how="left")


def pick_configs(configs: pl.DataFrame, limit: int) -> list[int]:
    """Up to ``limit`` configurations to draw as panels, spread evenly over the sweep's order (first and last kept);
    all of them when there are few enough."""
    ids = configs["config"].to_list()
    if len(ids) <= limit:
        return ids
    idx = np.unique(np.linspace(0, len(ids) - 1, limit).round().astype(int))
    return [ids[i] for i in idx]
