"""Matplotlib figures (Agg backend: no display needed), each saved as PNG, SVG and PDF."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

MODE_COLOURS = {"token-only": "#1f77b4", "features": "#ff7f0e", "raw": "#d62728"}
BASELINE_COLOURS = {"edge-only": "#2ca02c", "cloud-only": "#d62728"}
GREY = "#b0b0b0"
PART_COLOURS = {"edge_prefill": "#8c564b", "edge_drafting": "#2ca02c", "gate": "#bcbd22", "uplink": "#17becf",
                "cloud_prefill": "#9467bd", "cloud_verify": "#d62728", "cloud_decode": "#e377c2",
                "downlink": "#1f77b4"}


def save(fig, out_dir: Path, name: str) -> bytes:
    """Write NAME.png/.svg/.pdf into out_dir; return the PNG bytes (for embedding)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"Creator": "sectrace"}
    fig.savefig(out_dir / f"{name}.svg", bbox_inches="tight", metadata={"Date": None, **meta})
    fig.savefig(out_dir / f"{name}.pdf", bbox_inches="tight", metadata={"CreationDate": None, **meta})
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    (out_dir / f"{name}.png").write_bytes(buf.getvalue())
    plt.close(fig)
    return buf.getvalue()


def _colour(policy: str, privacy: str) -> str:
    return BASELINE_COLOURS.get(policy) or MODE_COLOURS.get(privacy, "#333333")


def pareto(points: pl.DataFrame, quality_label: str, title: str):
    """Three projections of the 4-D front: quality against latency, cloud tokens and bytes up.

    Colour = privacy mode (front points); grey = dominated in all four axes; the step line is the
    2-D front of that projection.
    """
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True)
    xs = (("latency_s", "mean latency per caption (s)", False), ("cloud_tokens", "cloud tokens per caption", False),
          ("bytes_up", "bytes uploaded per caption", True))
    q = points["quality"].to_numpy().astype(float)
    on = points["on_front"].to_numpy()
    pol = points["policy"].to_list()
    priv = points["privacy"].to_list()
    for ax, (col, label, log) in zip(axes, xs):
        x = points[col].to_numpy().astype(float)
        ax.scatter(x[~on], q[~on], s=22, c=GREY, alpha=0.55, edgecolors="none", label="dominated")
        for mode in ("token-only", "features", "raw"):
            sel = on & np.array([p == mode and n not in BASELINE_COLOURS for p, n in zip(priv, pol)])
            if sel.any():
                ax.scatter(x[sel], q[sel], s=40, c=MODE_COLOURS[mode], edgecolors="black", linewidths=0.4,
                           label=f"front: {mode}")
        for name, colour in BASELINE_COLOURS.items():
            sel = np.array([n == name for n in pol])
            if sel.any():
                ax.scatter(x[sel], q[sel], s=90, marker="*", c=colour, edgecolors="black", linewidths=0.5,
                           label=name, zorder=5)
        ok = np.isfinite(x) & np.isfinite(q)
        if ok.any():  # the 2-D front of this projection: lower x, higher quality
            order = np.lexsort((-q[ok], x[ok]))
            fx, fq, best = [], [], -np.inf
            for xi, qi in zip(x[ok][order], q[ok][order]):
                if qi > best:
                    fx.append(xi)
                    fq.append(qi)
                    best = qi
            ax.step(fx, fq, where="post", color="black", lw=0.8, alpha=0.6)
        if log:
            ax.set_xscale("symlog", linthresh=100)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(quality_label)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def latency_cdf(results: pl.DataFrame, highlight: set[str], title: str):
    """Empirical CDF of per-caption latency for each policy (highlighted ones in colour, others grey)."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    palette = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
    i = 0
    for (pol,), grp in results.filter(pl.col("covered")).group_by(["policy"], maintain_order=True):
        lat = np.sort(grp["latency_s"].to_numpy().astype(float))
        y = np.arange(1, len(lat) + 1) / len(lat)
        if pol in highlight:
            colour = BASELINE_COLOURS.get(pol) or palette[i % len(palette)]
            i += 0 if pol in BASELINE_COLOURS else 1
            ax.step(lat, y, where="post", lw=1.6, color=colour, label=pol)
        else:
            ax.step(lat, y, where="post", lw=0.7, color=GREY, alpha=0.6)
    ax.set_xlabel("latency per caption (s)")
    ax.set_ylabel("share of captions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig


def breakdown(parts: pl.DataFrame, title: str):
    """Stacked bars: mean seconds per caption in each part of the run (edge, network, cloud)."""
    names = [c for c in PART_COLOURS if c in parts.columns]
    fig, ax = plt.subplots(figsize=(9, 0.45 * parts.height + 1.6))
    y = np.arange(parts.height)
    left = np.zeros(parts.height)
    for name in names:
        v = parts[name].to_numpy().astype(float)
        ax.barh(y, v, left=left, color=PART_COLOURS[name], label=name.replace("_", " "))
        left += v
    ax.set_yticks(y, parts["policy"].to_list(), fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("mean seconds per caption")
    ax.legend(fontsize=7, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.5 / max(parts.height, 1)))
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig


def privacy_bars(table: pl.DataFrame, title: str):
    """Per policy: share of captions that contact the cloud, of caption tokens and emotion words it sees."""
    metrics = [("contact_share", "utterances contacting the cloud"), ("caption_share_seen", "caption tokens seen"),
               ("emotion_words_exposed", "emotion words seen")]
    fig, ax = plt.subplots(figsize=(9, 0.5 * table.height + 1.6))
    y = np.arange(table.height)
    h = 0.27
    for j, (col, label) in enumerate(metrics):
        v = table[col].cast(pl.Float64).fill_null(np.nan).to_numpy() if col in table.columns else np.full(len(y), np.nan)
        ax.barh(y + (j - 1) * h, np.nan_to_num(v), height=h, label=label)
    labels = [f"{p}  [{m}]" if p not in BASELINE_COLOURS else p
              for p, m in zip(table["policy"].to_list(), table["privacy"].to_list())]
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("share")
    ax.legend(fontsize=7, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.5 / max(table.height, 1)))
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig


def break_even(rtts, speeds, ratios: dict, current_rtt: float, title: str):
    """Heatmaps of hybrid/edge-only latency over RTT × edge speed-up, with the break-even contour (ratio 1)."""
    from matplotlib.colors import TwoSlopeNorm

    names = list(ratios)[:4]
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.2), squeeze=False)
    vmax = max(2.0, max(float(np.nanmax(ratios[n])) for n in names))
    norm = TwoSlopeNorm(vmin=min(0.5, min(float(np.nanmin(ratios[n])) for n in names)), vcenter=1.0, vmax=vmax)
    for ax, name in zip(axes[0], names):
        r = ratios[name]
        mesh = ax.pcolormesh(rtts * 1000, speeds, r, cmap="RdYlGn_r", norm=norm, shading="auto")
        if np.nanmin(r) < 1 < np.nanmax(r):
            ax.contour(rtts * 1000, speeds, r, levels=[1.0], colors="black", linewidths=1.2)
        ax.plot([current_rtt * 1000], [1.0], marker="o", color="black", ms=5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("RTT (ms)")
        ax.set_title(name, fontsize=8)
    axes[0][0].set_ylabel("edge speed-up (×)")
    fig.colorbar(mesh, ax=axes[0].tolist(), label="latency / edge-only latency", shrink=0.9)
    fig.suptitle(title, fontsize=11)
    return fig


def validation(rows: pl.DataFrame, title: str):
    """Measured (x) against simulated (y) latency per live run, one colour per policy; the diagonal is no error."""
    ok = rows.filter(pl.col("caption_match") & pl.col("predicted_latency_s").is_not_null())
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for i, (pol, g) in enumerate(ok.group_by("policy", maintain_order=True)):
        ax.scatter(g["latency_s"], g["predicted_latency_s"], s=16, label=str(pol[0])[:48], color=f"C{i % 10}")
    hi = float(max(ok["latency_s"].max() or 1, ok["predicted_latency_s"].max() or 1)) * 1.05
    ax.plot([0, hi], [0, hi], color="#888", lw=0.8)
    ax.fill_between([0, hi], [0, 0.95 * hi], [0, 1.05 * hi], color="#888", alpha=0.12, label="±5 %")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("measured latency (s)")
    ax.set_ylabel("simulated latency (s)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6, loc="upper left")
    return fig
