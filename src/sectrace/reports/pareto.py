"""Pareto fronts over quality × latency × cloud cost × privacy.

A policy (at one network/device configuration) is dominated when another is at least as good on
every axis and better on one. Dominated points stay in the tables and figures, greyed: seeing
what a gate costs for nothing is as informative as the front itself.
"""

from __future__ import annotations

import numpy as np
import polars as pl

#: (column, direction, label) of the four axes; +1 = higher is better.
AXES = (
    ("quality", +1, "quality"),
    ("latency_s", -1, "mean latency (s)"),
    ("cloud_tokens", -1, "cloud tokens per caption"),
    ("bytes_up", -1, "bytes uploaded per caption"),
)


def pareto_mask(points: np.ndarray, better: np.ndarray) -> np.ndarray:
    """True where a row is not dominated. ``better[j]`` is +1 if higher is better on axis j, −1 if lower.

    Rows with a NaN on any axis are never on the front (and dominate nothing).
    """
    pts = np.asarray(points, dtype=float) * np.asarray(better, dtype=float)  # now: higher is better everywhere
    ok = np.isfinite(pts).all(axis=1)
    n = len(pts)
    front = ok.copy()
    for i in range(n):
        if not ok[i]:
            continue
        ge = (pts[ok] >= pts[i]).all(axis=1)
        gt = (pts[ok] > pts[i]).any(axis=1)
        if (ge & gt).any():
            front[i] = False
    return front


def pareto_table(points: pl.DataFrame, quality_col: str | None, by: str = "config") -> pl.DataFrame:
    """Add ``quality`` (from ``quality_col``) and ``on_front`` (per ``by`` group) to per-policy points.

    Without a quality column (``None``: a sweep summary with no agreement and no trace to replay)
    ``quality`` is null and the front has the three cost axes only."""
    if quality_col is None:
        df = points.with_columns(pl.lit(None, pl.Float64).alias("quality"))
        axes = AXES[1:]
    else:
        df = points.with_columns(pl.col(quality_col).cast(pl.Float64).alias("quality"))
        if f"{quality_col}_lo" in df.columns and f"{quality_col}_hi" in df.columns:  # its 95 % interval
            df = df.with_columns(pl.col(f"{quality_col}_lo").cast(pl.Float64).alias("quality_lo"),
                                 pl.col(f"{quality_col}_hi").cast(pl.Float64).alias("quality_hi"))
        axes = AXES
    cols = [a[0] for a in axes]
    better = np.array([a[1] for a in axes])
    parts = []
    for _, grp in df.group_by(by, maintain_order=True):
        mask = pareto_mask(grp.select(cols).to_numpy(), better)
        parts.append(grp.with_columns(pl.Series("on_front", mask)))
    return pl.concat(parts) if parts else df.with_columns(pl.lit(False).alias("on_front"))
