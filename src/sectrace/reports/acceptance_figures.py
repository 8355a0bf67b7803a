"""The acceptance figures (data from reports.acceptance): per-position acceptance, the accepted-length
histogram, and mean acceptance length, latency and speedup against k.

Drawn the way the other figures are: each policy in its own (colour, dash) from reports.style, the
key outside the panels, one small panel per k where the x axis depends on k. Families of policies
(equal but for k) are lines of their own colour and dash, each point labelled with its policy's
number, 95 % intervals as whiskers.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl
from matplotlib.lines import Line2D

from .figures import _add_key, _fix_layout, key_plan, place_labels
from .style import PolicyStyle, assign


def _handle(st: PolicyStyle) -> Line2D:
    return Line2D([], [], color=st.colour, ls=st.linestyle, lw=1.5, marker="o", ms=3.5)


def _per_k_panels(df: pl.DataFrame, x: str, y: str, styles: dict[str, PolicyStyle], xlabel: str, ylabel: str,
                  x_from: int):
    """One panel per k (x from ``x_from`` to k), one line with points per policy in its style, y shared; the
    policies of a panel are set a little apart along x (dodged) so equal values do not hide one another."""
    ks = sorted(df["k"].unique().to_list())
    present = set(df["policy"].to_list())
    pols = [p for p in sorted(styles, key=lambda p: styles[p].number) if p in present]
    ncols = min(len(ks), 3)
    nrows = -(-len(ks) // ncols)
    plan = key_plan([f"{styles[p].number:>2}  {p}" for p in pols], width_in=3.4 * ncols + 0.9, sample_in=0.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols + 0.9 + plan.right_in, 2.7 * nrows + 1.15
                                                    + plan.bottom_in), sharey=True, squeeze=False)
    _fix_layout(fig, plan)
    for ax in axes.flat[len(ks):]:
        ax.set_visible(False)
    for ax, k in zip(axes.flat, ks):
        sub = df.filter(pl.col("k") == k)
        here = [p for p in pols if p in set(sub["policy"].to_list())]
        for i, p in enumerate(here):
            g = sub.filter(pl.col("policy") == p).sort(x)
            st = styles[p]
            dx = 0.05 * (i - (len(here) - 1) / 2)
            ax.plot(g[x].to_numpy() + dx, g[y].to_numpy(), color=st.colour, ls=st.linestyle, lw=1.3, marker="o", ms=3.5,
                    gid=f"{x}-k{k}-p{st.number}")
        ax.set_xticks(range(x_from, k + 1))
        ax.set_xlim(x_from - 0.4, k + 0.4)
        ax.set_title(f"k = {k}", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    axes[0][0].set_ylim(-0.03, 1.05)
    _add_key(fig, plan, title="policy", handles=[_handle(styles[p]) for p in pols])
    return fig


def by_position(df: pl.DataFrame, styles: dict[str, PolicyStyle]):
    """Acceptance rate of draft positions 1..k, one panel per k, one line per policy."""
    return _per_k_panels(df, "position", "rate", styles, "draft position", "acceptance rate (share of verify calls)",
                         1)


def accepted_histogram(df: pl.DataFrame, styles: dict[str, PolicyStyle]):
    """Share of verify calls that accepted exactly j drafted tokens, j = 0..k, one panel per k."""
    return _per_k_panels(df, "accepted", "share", styles, "drafted tokens accepted in the call",
                         "share of verify calls", 0)


#: The panels of :func:`versus_k`: (column, axis label); mean acceptance length does not depend on the
#: configuration, so it is drawn once, in the first row.
VERSUS_PANELS = (("mean_acceptance_length", "mean acceptance length (tokens per verify call)"),
                 ("latency_s", "mean latency per caption (s)"), ("speedup_vs_edge", "speedup vs edge-only (×)"))


def family_styles(families: list[str]) -> dict[str, PolicyStyle]:
    """Each family its own (colour, dash), in the order given (reports.style's rule, over families)."""
    return assign(families)


def versus_k(df: pl.DataFrame, panels: list[tuple[int, str]], styles: dict[str, PolicyStyle]):
    """Mean acceptance length, mean latency and speedup vs edge-only against k: one line per family (gate,
    acceptance rule), a row per configuration in ``panels``, whiskers from the ``_lo``/``_hi`` columns,
    points a little apart per family (dodged) so whiskers do not hide one another."""
    families = df["family"].unique(maintain_order=True).to_list()
    fam = family_styles(families)
    ks = sorted(df["k"].unique().to_list())
    plan = key_plan(families, width_in=3.4 * 3 + 0.9, sample_in=0.5)
    nrows = len(panels)
    fig, axes = plt.subplots(nrows, 3, figsize=(3.4 * 3 + 0.9 + plan.right_in, 2.7 * nrows + 1.15 + plan.bottom_in),
                             sharex=True, sharey="col", squeeze=False)
    _fix_layout(fig, plan)
    fig.subplots_adjust(wspace=0.38)  # each column has its own y axis and label
    dodge = 0.08 if len(families) > 1 else 0.0
    labellers = []
    for row, (config, title) in enumerate(panels):
        for col, (metric, label) in enumerate(VERSUS_PANELS):
            ax = axes[row][col]
            if metric not in df.columns or (col == 0 and row > 0):
                ax.set_visible(False)
                continue
            xs_all, ys_all, nums = [], [], []
            for i, f in enumerate(families):
                g = df.filter((pl.col("family") == f) & (pl.col("config") == config)).sort("k")
                if not g.height:
                    continue
                st = fam[f]
                x = g["k"].to_numpy().astype(float) + dodge * (i - (len(families) - 1) / 2)
                y = g[metric].cast(pl.Float64).to_numpy()
                yerr = None
                if f"{metric}_lo" in g.columns and f"{metric}_hi" in g.columns:
                    lo = g[f"{metric}_lo"].cast(pl.Float64).to_numpy()
                    hi = g[f"{metric}_hi"].cast(pl.Float64).to_numpy()
                    yerr = np.nan_to_num(np.vstack([y - lo, hi - y]).clip(min=0))
                ax.errorbar(x, y, yerr=yerr, color=st.colour, ls=st.linestyle, lw=1.3, marker="o", ms=3.5,
                            elinewidth=0.8, capsize=2, gid=f"{metric}-c{config}-f{st.number}")
                xs_all += x.tolist()
                ys_all += y.tolist()
                nums += [styles[p].number if p in styles else "?" for p in g["policy"].to_list()]
            if metric == "speedup_vs_edge":
                ax.axhline(1.0, color="#888", lw=0.8, ls=":")
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            ax.set_xticks(ks)
            ax.set_ylabel(label, fontsize=7.5)
            ax.set_title(title if col else "any configuration", fontsize=8)
            labellers.append((ax, xs_all, ys_all, nums))
    for ax in [*axes[-1], axes[0][0]]:  # the first row's acceptance panel stands alone in its column
        ax.set_xlabel("k (drafted tokens per block)", fontsize=8)
        ax.tick_params(labelbottom=True)
    for ax in axes.flat:
        ax.autoscale_view()
    for ax, xs, ys, nums in labellers:
        place_labels(ax, np.array(xs), np.array(ys), nums, fontsize=6.5)
    _add_key(fig, plan, title="gate and acceptance rule (numbers on the points: policies)",
             handles=[_handle(fam[f]) for f in families])
    return fig
