"""Matplotlib figures (Agg backend: no display needed), each saved as PNG, SVG and PDF.

Every figure is meant to be read without the tables: Pareto points carry their policy's number
(reports.style) next to them and a key beside the plot lists the numbers; curves get a unique
(colour, line style) pair per policy; legends sit outside the plotting area; one configuration per
small panel rather than one full-size copy per configuration. SVG keeps text as text and PDF embeds
TrueType fonts, so labels stay searchable and editable for papers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl
from matplotlib.lines import Line2D

from .style import BASELINES, GREY, MODE_COLOURS, MODE_MARKERS, PolicyStyle

BASELINE_COLOURS = {"edge-only": "#2ca02c", "cloud-only": "#d62728"}
#: Parts of a run in the order they are stacked (simulate.overhead.BREAKDOWN_PARTS and timing's coarser parts).
PART_COLOURS = {"edge_prefill": "#8c564b", "edge_drafting": "#2ca02c", "wasted_drafts": "#98df8a", "gate": "#bcbd22",
                "uplink": "#17becf", "queueing": "#7f7f7f", "cloud_prefill": "#9467bd", "cloud_verify": "#d62728",
                "resync": "#ff9896", "cloud_decode": "#e377c2", "downlink": "#1f77b4"}
RC = {"svg.fonttype": "none", "pdf.fonttype": 42, "ps.fonttype": 42}
#: Panels per small-multiples figure; more configurations are listed in the tables and the interactive view.
MAX_PANELS = 12


def save(fig, out_dir: Path, name: str) -> bytes:
    """Write NAME.png/.svg/.pdf into out_dir; return the PNG bytes (for embedding)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"Creator": "sectrace"}
    with plt.rc_context(RC):
        fig.savefig(out_dir / f"{name}.svg", bbox_inches="tight", metadata={"Date": None, **meta})
        fig.savefig(out_dir / f"{name}.pdf", bbox_inches="tight", metadata={"CreationDate": None, **meta})
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    (out_dir / f"{name}.png").write_bytes(buf.getvalue())
    plt.close(fig)
    return buf.getvalue()


@dataclass
class KeyPlan:
    """Where a figure's policy key goes: right of the panels (up to RIGHT_MAX lines) or below them, in columns."""

    where: str
    lines: list
    right_in: float = 0.0  # width reserved on the right
    bottom_in: float = 0.0  # height reserved below the x labels
    ncol: int = 1
    fontsize: float = 6.5


RIGHT_MAX = 28


def key_plan(lines: list[str], categories: int = 0, width_in: float = 9.0, sample_in: float = 0.0,
             fontsize: float = 6.5) -> KeyPlan:
    """``width_in``: the figure's width without the key; ``sample_in``: width of a line sample before each entry."""
    longest = max((len(s) for s in lines), default=10)
    line_w = 0.6 * fontsize / 72 * longest + 0.3 + sample_in
    cat_w = 2.0 if categories else 0.0
    if len(lines) <= RIGHT_MAX:
        return KeyPlan("right", lines, right_in=max(line_w, cat_w) + 0.2, fontsize=fontsize)
    ncol = max(1, int((width_in - 0.75) // line_w))
    rows = -(-len(lines) // ncol)
    line_h = 1.3 * fontsize / 72
    return KeyPlan("bottom", lines, bottom_in=rows * line_h + 0.45 + (0.35 if categories else 0), ncol=ncol,
                   fontsize=fontsize)


def _grid(n: int, plan: KeyPlan, ncols_max: int = 4, w: float = 3.3, h: float = 2.7):
    ncols = min(n, ncols_max)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols + 0.9 + plan.right_in, h * nrows + 1.15 + plan.bottom_in),
                             sharex=True, sharey=True, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    _fix_layout(fig, plan)
    return fig, axes


def _fix_layout(fig, plan: KeyPlan, top_in: float = 0.55, bottom_in: float = 0.6):
    """Fixed margins (in inches) before labels are placed, so label positions computed in pixels stay valid."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.75 / w, right=1 - (plan.right_in + 0.15) / w, top=1 - top_in / h,
                        bottom=(bottom_in + plan.bottom_in) / h, wspace=0.12, hspace=0.32)


def place_labels(ax, xs, ys, texts, fontsize=7, gid: str | None = None):
    """Write each text next to its point, choosing among offsets the first one whose box overlaps no other
    label and no point; points that fall on the same pixel share one label ("3,7"), four numbers a line.
    With ``gid``, each label's SVG group is named ``{gid}-{numbers joined by -}`` (tests read them back)."""
    fig = ax.figure
    trans = ax.transData
    pts = [(x, y, t) for x, y, t in zip(xs, ys, texts) if np.isfinite(x) and np.isfinite(y)]
    if not pts:
        return []
    pix = trans.transform(np.array([[p[0], p[1]] for p in pts]))
    groups: list[list[int]] = []
    for i, (px, py) in enumerate(pix):
        for g in groups:
            gx, gy = pix[g[0]]
            if abs(gx - px) < 3 and abs(gy - py) < 3:
                g.append(i)
                break
        else:
            groups.append([i])
    dpi = fig.dpi
    ch_w, ch_h = 0.62 * fontsize * dpi / 72, 1.15 * fontsize * dpi / 72
    point_boxes = [(px - 4, py - 4, px + 4, py + 4) for px, py in pix]
    placed = []
    out = []
    offsets = [(5, 3), (5, -11), (-5, 3), (-5, -11), (0, 7), (0, -15), (9, -4), (-9, -4)]
    for g in sorted(groups, key=lambda g: (pix[g[0]][0], pix[g[0]][1])):
        nums = [str(pts[i][2]) for i in sorted(g, key=lambda i: int(pts[i][2]) if str(pts[i][2]).isdigit() else 0)]
        lines = [",".join(nums[j:j + 4]) for j in range(0, len(nums), 4)]  # every number shown, four a line
        label = ",\n".join(lines)
        px, py = pix[g[0]]
        w, h = ch_w * max(len(x) for x in lines), ch_h * len(lines)
        choice = None
        for r in (1.0, 1.8, 2.6):
            for dx, dy in offsets:
                ox, oy = dx * r, dy * r
                x0 = px + ox - (w if dx < 0 else (w / 2 if dx == 0 else 0))
                box = (x0, py + oy, x0 + w, py + oy + h)
                if not any(_overlap(box, b) for b in placed) and not any(
                        _overlap(box, b) for b in point_boxes if not (b[0] < px < b[2] and b[1] < py < b[3])):
                    choice = (ox, oy, "right" if dx < 0 else ("center" if dx == 0 else "left"), box)
                    break
            if choice:
                break
        if choice is None:
            x0 = px + 5
            choice = (5, 3, "left", (x0, py + 3, x0 + w, py + 3 + h))
        ox, oy, ha, box = choice
        placed.append(box)
        t = ax.annotate(label, (pts[g[0]][0], pts[g[0]][1]), xytext=(ox * 72 / dpi, oy * 72 / dpi),
                        textcoords="offset points", fontsize=fontsize, ha=ha, va="bottom", color="#111",
                        annotation_clip=False,
                        arrowprops=None if abs(ox) < 10 and abs(oy) < 12 else
                        dict(arrowstyle="-", lw=0.4, color="#666", shrinkA=0, shrinkB=2))
        if gid:
            t.set_gid(f"{gid}-{'-'.join(nums)}")
        out.append(t)
    return out


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _step_front(x, y, x_better: int, y_better: int):
    """The 2-D front of a projection as step coordinates (lower/higher is better per axis)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return [], []
    xs, ys = x[ok] * -x_better, y[ok] * y_better  # now: lower x, higher y better
    order = np.lexsort((-ys, xs))
    fx, fy, best = [], [], -np.inf
    for xi, yi in zip(xs[order], ys[order]):
        if yi > best:
            fx.append(xi * -x_better)
            fy.append(yi * y_better)
            best = yi
    return fx, fy


def _front_panel(ax, pts: pl.DataFrame, xcol: str, ycol: str, styles: dict[str, PolicyStyle], front_col: str,
                 x_better=-1, y_better=+1, label=True, gid: str | None = None):
    """One projection: dominated points hollow grey, front points filled by privacy mode, baselines as
    stars, the projection's own 2-D front as a step line, and every point labelled by policy number."""
    x = pts[xcol].cast(pl.Float64).to_numpy()
    y = pts[ycol].cast(pl.Float64).to_numpy()
    on = pts[front_col].fill_null(False).to_numpy()
    pol = pts["policy"].to_list()
    priv = pts["privacy"].to_list()
    base = np.array([p in BASELINES for p in pol])
    err = {}
    for axis, c in (("xerr", xcol), ("yerr", ycol)):  # 95 % intervals, when the results carry them
        if f"{c}_lo" in pts.columns and f"{c}_hi" in pts.columns:
            v = pts[c].cast(pl.Float64).to_numpy()
            lo = pts[f"{c}_lo"].cast(pl.Float64).to_numpy()
            hi = pts[f"{c}_hi"].cast(pl.Float64).to_numpy()
            err[axis] = np.nan_to_num(np.vstack([v - lo, hi - v]).clip(min=0))
    if err:
        ax.errorbar(x, y, fmt="none", ecolor="#c8c8c8", elinewidth=0.7, capsize=0, zorder=1, **err)
    for mode, marker in MODE_MARKERS.items():
        m = np.array([p == mode for p in priv]) & ~base
        if (m & ~on).any():
            ax.scatter(x[m & ~on], y[m & ~on], s=26, marker=marker, facecolors="white", edgecolors=GREY,
                       linewidths=0.9, zorder=2)
        if (m & on).any():
            ax.scatter(x[m & on], y[m & on], s=36, marker=marker, c=MODE_COLOURS[mode], edgecolors="black",
                       linewidths=0.5, zorder=3)
    for name, colour in BASELINE_COLOURS.items():
        m = np.array([p == name for p in pol])
        if m.any():
            ax.scatter(x[m], y[m], s=95, marker="*", c=colour, edgecolors="black", linewidths=0.5, zorder=4)
    fx, fy = _step_front(x, y, x_better, y_better)
    if fx:
        ax.step(fx, fy, where="post", color="black", lw=0.7, alpha=0.5, zorder=1)
    ax.grid(alpha=0.3)
    if label:
        return lambda: place_labels(ax, x, y, [styles[p].number if p in styles else "?" for p in pol], gid=gid)
    return lambda: None


def _modes(points: pl.DataFrame) -> set[str]:
    """Privacy modes of the hybrid policies drawn (baselines have their own stars in the legend)."""
    return set(points.filter(~pl.col("policy").is_in(list(BASELINES)))["privacy"].to_list())


def _category_handles(privacies) -> list:
    hs = [Line2D([], [], ls="none", marker="o", mfc="white", mec=GREY, label="dominated (all four axes)")]
    for mode, marker in MODE_MARKERS.items():
        if mode in privacies:
            hs.append(Line2D([], [], ls="none", marker=marker, mfc=MODE_COLOURS[mode], mec="black", mew=0.5,
                             label=f"on the front: {mode}"))
    for name, colour in BASELINE_COLOURS.items():
        hs.append(Line2D([], [], ls="none", marker="*", ms=11, mfc=colour, mec="black", mew=0.5, label=name))
    hs.append(Line2D([], [], color="black", lw=0.7, alpha=0.5, label="front of this projection"))
    return hs


def _key_text(styles: dict[str, PolicyStyle], names) -> list[str]:
    names = [n for n in names if n in styles]
    return [f"{styles[n].number:>2}  {n}" for n in sorted(names, key=lambda n: styles[n].number)]


def _add_key(fig, plan: KeyPlan, privacies=None, title="policy key (numbers on the points)", handles=None):
    """The categories (when ``privacies`` is given) and the number → policy key, right of or below the panels."""
    w, h = fig.get_size_inches()
    mono = {"family": "monospace", "size": plan.fontsize}
    handles = handles or [Line2D([], [], ls="none") for _ in plan.lines]
    no_handle = all(getattr(x, "get_linestyle", lambda: "")() in ("None", "none", "") and
                    getattr(x, "get_marker", lambda: "")() in (None, "None", "none", "") for x in handles)
    extra = dict(handlelength=0, handletextpad=0) if no_handle else dict(handlelength=3.2)
    if plan.where == "right":
        x0 = 1 - (plan.right_in + 0.05) / w
        y = 1 - 0.1 / h
        if privacies is not None:
            cat = fig.legend(handles=_category_handles(privacies), loc="upper left", bbox_to_anchor=(x0, y),
                             fontsize=plan.fontsize + 0.5, frameon=False, borderaxespad=0.2)
            y -= (0.25 + 0.17 * len(cat.get_texts())) / h
        fig.legend(handles, plan.lines, loc="upper left", ncols=1, bbox_to_anchor=(x0, y), frameon=False,
                   title=title, title_fontsize=plan.fontsize + 0.5, alignment="left", prop=mono, **extra)
        return
    y = (plan.bottom_in + 0.05) / h
    if privacies is not None:
        hs = _category_handles(privacies)
        fig.legend(handles=hs, loc="upper left", bbox_to_anchor=(0.75 / w, y), ncols=len(hs),
                   fontsize=plan.fontsize + 0.5, frameon=False, borderaxespad=0.2)
        y -= 0.35 / h
    fig.legend(handles, plan.lines, loc="upper left", ncols=plan.ncol, bbox_to_anchor=(0.75 / w, y), frameon=False,
               title=title, title_fontsize=plan.fontsize + 0.5, alignment="left", prop=mono, columnspacing=1.5, **extra)


def pareto_small_multiples(front: pl.DataFrame, panels: list[tuple[int, str]], styles: dict[str, PolicyStyle],
                           x=("latency_s", "mean latency per caption (s)", -1),
                           y=("quality", "quality", +1), title: str = ""):
    """One small panel per configuration (``panels``: (config, its short title)), x and y shared, so the
    front's movement across configurations reads at a glance. Points are filled when on that
    configuration's 4-D front and labelled by policy number."""
    plan = key_plan(_key_text(styles, front["policy"].unique(maintain_order=True).to_list()), categories=1,
                    width_in=3.3 * min(len(panels), 4) + 0.9)
    fig, axes = _grid(len(panels), plan)
    labellers = []
    for ax, (c, sub_title) in zip(axes.flat, panels):
        sub = front.filter(pl.col("config") == c)
        labellers.append(_front_panel(ax, sub, x[0], y[0], styles, "on_front", x[2], y[2], gid=f"label-c{c}"))
        ax.set_title(sub_title, fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel(x[1], fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(y[1], fontsize=8)
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
        ax.autoscale_view()
    for f in labellers:
        f()
    if title:
        fig.suptitle(title, fontsize=10, x=0.75 / fig.get_size_inches()[0], ha="left")
    _add_key(fig, plan, _modes(front))
    return fig


def pareto_costs(points: pl.DataFrame, styles: dict[str, PolicyStyle], quality_label: str, title: str = ""):
    """Quality against cloud tokens and bytes uploaded: neither depends on the network or device, so one
    figure serves every configuration. Filled: on the 4-D front in at least one configuration."""
    plan = key_plan(_key_text(styles, points["policy"].unique(maintain_order=True).to_list()), categories=1,
                    width_in=8.2)
    fig, axes = plt.subplots(1, 2, figsize=(8.2 + plan.right_in, 3.9 + plan.bottom_in), sharey=True, squeeze=False)
    _fix_layout(fig, plan)
    labellers = []
    for ax, (col, label, log) in zip(axes[0], (("cloud_tokens", "cloud tokens per caption", False),
                                               ("bytes_up", "bytes uploaded per caption", True))):
        labellers.append(_front_panel(ax, points, col, "quality", styles, "on_front_any", gid=f"label-{col}"))
        if log:
            ax.set_xscale("symlog", linthresh=100)
        ax.set_xlabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.autoscale_view()
    axes[0][0].set_ylabel(quality_label, fontsize=8)
    for f in labellers:
        f()
    if title:
        fig.suptitle(title, fontsize=10, x=0.75 / fig.get_size_inches()[0], ha="left")
    _add_key(fig, plan, _modes(points))
    return fig


def cdf_points(lat: np.ndarray, max_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(sorted latencies, share of captions at or below) of an empirical CDF, thinned to ``max_points``
    evenly spaced ranks (the first and last always kept) for large traces."""
    lat = np.sort(lat[np.isfinite(lat)])
    n = len(lat)
    y = np.arange(1, n + 1) / max(n, 1)
    if n > max_points:
        idx = np.unique(np.linspace(0, n - 1, max_points).round().astype(int))
        return lat[idx], y[idx]
    return lat, y


def latency_cdf(results: pl.DataFrame, panels: list[tuple[int, str]], styles: dict[str, PolicyStyle],
                on_front: dict[int, set[str]], title: str = ""):
    """Empirical CDF of per-caption latency, one small panel per configuration, one curve per policy with
    its own (colour, line style); thick where the policy is on that configuration's front. The legend
    sits outside, on the right."""
    pols = [p for p in sorted(styles, key=lambda p: styles[p].number)
            if p in set(results["policy"].unique().to_list())]
    plan = key_plan([f"{styles[p].number:>2}  {p}" for p in pols], width_in=3.6 * min(len(panels), 3) + 0.9,
                    sample_in=0.5)
    fig, axes = _grid(len(panels), plan, ncols_max=3, w=3.6, h=2.8)
    cov = results.filter(pl.col("covered"))
    for ax, (c, sub_title) in zip(axes.flat, panels):
        sub = cov.filter(pl.col("config") == c)
        front = on_front.get(c, set())
        for pol in pols:
            lat = sub.filter(pl.col("policy") == pol)["latency_s"].to_numpy().astype(float)
            if not len(lat):
                continue
            xs, ys = cdf_points(lat)
            st = styles[pol]
            thick = pol in front or pol in BASELINES
            ax.step(xs, ys, where="post", color=st.colour, ls=st.linestyle, lw=1.7 if thick else 0.9,
                    alpha=1.0 if thick else 0.75, marker=st.marker if st.marker != "o" else None, markevery=[-1],
                    ms=4, gid=f"cdf-c{c}-p{st.number}")
        ax.set_title(sub_title, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("latency per caption (s)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("share of captions", fontsize=8)
    handles = [Line2D([], [], color=styles[p].colour, ls=styles[p].linestyle, lw=1.5,
                      marker=styles[p].marker if styles[p].marker != "o" else None, ms=4) for p in pols]
    _add_key(fig, plan, title="policy (thick: on the front there)", handles=handles)
    if title:
        fig.suptitle(title, fontsize=10, x=0.75 / fig.get_size_inches()[0], ha="left")
    return fig


def breakdown(parts: pl.DataFrame, title: str, styles: dict[str, PolicyStyle] | None = None):
    """Stacked bars: mean seconds per caption in each part of the run (edge, network, cloud)."""
    # every numeric column is a part: known ones in their colour and place, any other after them in grey shades
    other = [c for c in parts.columns if c != "policy" and c not in PART_COLOURS and parts.schema[c].is_numeric()]
    names = [c for c in PART_COLOURS if c in parts.columns] + other
    colours = {**PART_COLOURS, **{c: str(0.35 + 0.5 * i / max(len(other), 1)) for i, c in enumerate(other)}}
    fig, ax = plt.subplots(figsize=(9, 0.32 * parts.height + 1.6))
    y = np.arange(parts.height)
    left = np.zeros(parts.height)
    for name in names:
        v = np.nan_to_num(parts[name].cast(pl.Float64).to_numpy())
        ax.barh(y, v, left=left, color=colours[name], label=name.replace("_", " "))
        left += v
    labels = [f"{styles[p].number}  {p}" if styles and p in styles else p for p in parts["policy"].to_list()]
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("mean seconds per caption")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def privacy_bars(table: pl.DataFrame, title: str, styles: dict[str, PolicyStyle] | None = None):
    """Per policy: share of captions that contact the cloud, of caption tokens and emotion words it sees."""
    metrics = [("contact_share", "utterances contacting the cloud", "#4c72b0", None),
               ("caption_share_seen", "caption tokens seen", "#dd8452", "///"),
               ("emotion_words_exposed", "emotion words seen", "#55a868", "...")]
    fig, ax = plt.subplots(figsize=(9, 0.36 * table.height + 1.6))
    y = np.arange(table.height)
    h = 0.27
    for j, (col, label, colour, hatch) in enumerate(metrics):
        v = table[col].cast(pl.Float64).fill_null(np.nan).to_numpy() if col in table.columns else np.full(len(y), np.nan)
        ax.barh(y + (j - 1) * h, np.nan_to_num(v), height=h, label=label, color=colour, hatch=hatch,
                edgecolor="white", linewidth=0)
    labels = [(f"{styles[p].number}  " if styles and p in styles else "") + (f"{p}  [{m}]" if p not in BASELINES else p)
              for p, m in zip(table["policy"].to_list(), table["privacy"].to_list())]
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("share")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def break_even(rtts, speeds, ratios: dict, current_rtt: float, title: str, styles=None):
    """Heatmaps of hybrid/edge-only latency over RTT × edge speed-up, with the break-even contour (ratio 1)
    where a map crosses it. The colour scale is logarithmic and symmetric about 1 (2× slower is as red as 2×
    faster is green). Returns (figure, {policy: (min ratio, max ratio, contour drawn?)}) so the caption can
    say what is drawn."""
    from matplotlib.colors import LogNorm

    names = list(ratios)[:4]
    lo = min(float(np.nanmin(ratios[n])) for n in names)
    hi = max(float(np.nanmax(ratios[n])) for n in names)
    span = max(2.0, hi, 1 / max(lo, 1e-9))
    norm = LogNorm(vmin=1 / span, vmax=span)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names) + 1.3, 4.1), squeeze=False)
    fig.subplots_adjust(top=0.78, bottom=0.14, left=0.07, right=0.88, wspace=0.28)
    drawn = {}
    for ax, name in zip(axes[0], names):
        r = ratios[name]
        mesh = ax.pcolormesh(rtts * 1000, speeds, r, cmap="RdYlGn_r", norm=norm, shading="auto", rasterized=True)
        crosses = bool(np.nanmin(r) < 1 < np.nanmax(r))
        if crosses:
            ax.contour(rtts * 1000, speeds, r, levels=[1.0], colors="black", linewidths=1.2)
        drawn[name] = (float(np.nanmin(r)), float(np.nanmax(r)), crosses)
        if rtts.min() <= current_rtt <= rtts.max():
            ax.plot([current_rtt * 1000], [1.0], marker="o", color="black", ms=5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("RTT (ms)", fontsize=8)
        num = f"{styles[name].number}: " if styles and name in styles else ""
        ax.set_title(_wrap(num + name, 34), fontsize=7.5)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("edge speed-up (×)", fontsize=8)
    cax = fig.add_axes([0.9, 0.14, 0.015, 0.64])
    fig.colorbar(mesh, cax=cax, label="latency / edge-only latency (log)")
    fig.suptitle(title, fontsize=10, y=0.97)
    return fig, drawn


def _wrap(s: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(s, width)) or s


def validation(rows: pl.DataFrame, title: str, styles=None):
    """Measured (x) against simulated (y) latency per live run, one style per policy; the diagonal is no error."""
    from .style import assign

    ok = rows.filter(pl.col("caption_match") & pl.col("predicted_latency_s").is_not_null())
    own = assign(ok["policy"].unique(maintain_order=True).to_list())
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for (pol,), g in ok.group_by(["policy"], maintain_order=True):
        st = own[pol]
        ax.scatter(g["latency_s"], g["predicted_latency_s"], s=16, label=str(pol)[:48], color=st.colour,
                   marker=["o", "s", "^", "D"][(st.number - 1) // 9 % 4])
    hi = float(max(ok["latency_s"].max() or 1, ok["predicted_latency_s"].max() or 1)) * 1.05
    ax.plot([0, hi], [0, hi], color="#888", lw=0.8)
    ax.fill_between([0, hi], [0, 0.95 * hi], [0, 1.05 * hi], color="#888", alpha=0.12, label="±5 %")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("measured latency (s)")
    ax.set_ylabel("simulated latency (s)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig
