"""interactive.html: the report's Pareto and latency figures with hover, in one self-contained file.

Hand-written SVG drawn by a small inline script (templates/interactive.js) from the JSON data
embedded in the page: no library, no network, a few hundred kB for a sweep of thousands of
points. Hovering a point or a curve shows its policy and numbers; the same policy numbers,
colours and dash patterns as the static figures (reports.style).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from .render import render
from .style import BASELINES, MODE_COLOURS
from .tables import column_format

#: Columns shown on hover, in this order, when the points have them; other numeric columns follow.
HOVER = ("quality", "latency_s", "latency_p50_s", "latency_p90_s", "latency_p95_s", "ttft_s", "cloud_tokens",
         "cloud_calls", "bytes_up", "audio_bytes_up", "agree_cloud_similarity", "agree_cloud_exact", "cider_d_x100",
         "covered", "utterances")
#: Not worth a hover line: keys, configuration columns (the selector says them) and the policy's own fields.
SKIP = {"policy", "config", "trace", "trace_path", "k", "gate", "accept", "bonus", "privacy", "cloud_cache",
        "adaptive", "max_new_tokens", "rtt_s", "up_Bps", "down_Bps", "cost_source", "network", "edge_speedup",
        "cloud_speedup", "on_front", "synthetic", "tool_version", "n_scored", "overhead_bytes", "jitter", "loss",
        "rto_s"}


def _hover_extra(col: str, dtype) -> bool:
    """A numeric column of the points worth a hover line: not a key, a cost coefficient, a part time or a bound."""
    return (col not in SKIP and col not in HOVER and dtype.is_numeric() and not col.startswith(("t_", "cost_"))
            and not col.endswith(("_lo", "_hi")))


def _num(v):
    """JSON-safe number rounded to 4 significant digits (None for missing/NaN/inf); values a point's hover shows
    with their 95 % interval are [value, low, high]."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return bool(v)
    v = float(v)
    if not math.isfinite(v):
        return None
    return float(f"{v:.4g}")


def _cell(r: dict, c: str, ci):
    return _num(r[c]) if ci is None else [_num(r[c]), _num(r[ci[0]]), _num(r[ci[1]])]


def _per_policy(front: pl.DataFrame, cols: list[str]) -> bool:
    """True when every policy has one value of ``cols`` across configurations (nulls count as a value)."""
    if front.select("config").n_unique() <= 1:
        return False
    return bool((front.group_by("policy").agg(pl.struct(cols).n_unique().alias("n"))["n"] <= 1).all())


def interactive_data(ctx) -> dict:
    """The JSON the page draws from: policies with their styles, configurations, hover fields, points, CDFs."""
    from .figures import cdf_points

    front = ctx.front
    styles = ctx.styles
    extra = [c for c in front.columns if _hover_extra(c, front.schema[c])]
    # the quality column is shown once, as "quality" under its label
    cols = [c for c in HOVER if c in front.columns and (c != "quality" or ctx.qcol) and c != ctx.qcol]
    cols += [c for c in extra if c != ctx.qcol]
    fields, cis = [], []
    for c in cols:
        head, kind = column_format(c, front.schema[c])
        fields.append([c, ctx.qlabel if c == "quality" else head, kind])
        base = ctx.qcol if c == "quality" else c
        cis.append((f"{base}_lo", f"{base}_hi") if f"{base}_lo" in front.columns and f"{base}_hi" in front.columns
                   else None)
    # Columns that do not change with the configuration (captions, cloud cost and bytes do not depend on the
    # network) are stored once per policy: a sweep of many configurations stays a few hundred kB.
    fixed = [c for c, ci in zip(cols, cis) if _per_policy(front, [c, *(ci or ())])]
    for f in fields:
        f.append("policy" if f[0] in fixed else "point")
    point_cols = [(c, ci) for c, ci in zip(cols, cis) if c not in fixed]
    per_pol = {}
    for r in front.unique(subset=["policy"], keep="first", maintain_order=True).iter_rows(named=True):
        per_pol[r["policy"]] = [_cell(r, c, ci) if c in fixed else None for c, ci in zip(cols, cis)]
    rows = []
    for r in front.select("policy", "config", "on_front", *{x for c, ci in point_cols for x in (c, *(ci or ()))}) \
            .iter_rows(named=True):
        st = styles.get(r["policy"])
        if st is None:
            continue
        rows.append([st.number, int(r["config"]), bool(r["on_front"]), *[_cell(r, c, ci) for c, ci in point_cols]])
    policies = [{"n": st.number, "name": name, "colour": st.colour, "dash": st.svg_dash, "vals": per_pol.get(name),
                 "privacy": front.filter(pl.col("policy") == name)["privacy"][0],
                 "baseline": name in BASELINES,
                 "base_colour": {"edge-only": "#2ca02c", "cloud-only": "#d62728"}.get(name)}
                for name, st in sorted(styles.items(), key=lambda kv: kv[1].number)]
    if ctx.qcol:
        x_axes = [{"key": "latency_s", "label": "mean latency per caption (s)", "better": -1},
                  {"key": "cloud_tokens", "label": "cloud tokens per caption", "better": -1},
                  {"key": "bytes_up", "label": "bytes uploaded per caption", "better": -1}]
        y_axis = {"key": "quality", "label": ctx.qlabel, "better": 1}
    else:
        x_axes = [{"key": "cloud_tokens", "label": "cloud tokens per caption", "better": -1},
                  {"key": "bytes_up", "label": "bytes uploaded per caption", "better": -1}]
        y_axis = {"key": "latency_s", "label": "mean latency per caption (s)", "better": -1}
    configs = [{"id": int(c), "label": ctx.panel_title(c), "text": f"Configuration {c}: {ctx.conf_text(c)}"}
               for c in ctx.configs["config"].to_list()]
    cdf = {}
    if ctx.kind == "simulate":
        cov = ctx.res.filter(pl.col("covered"))
        for c in ctx.configs["config"].to_list():
            on = set(front.filter((pl.col("config") == c) & pl.col("on_front"))["policy"].to_list())
            curves = []
            for (pol,), g in cov.filter(pl.col("config") == c).group_by(["policy"], maintain_order=True):
                lat = g["latency_s"].to_numpy().astype(float)
                lat = lat[np.isfinite(lat)]
                if pol not in styles or not len(lat):
                    continue
                xs, ys = cdf_points(lat, 200)
                curves.append({"p": styles[pol].number, "x": [_num(v) for v in xs], "y": [_num(v) for v in ys],
                               "n": int(len(lat)), "mean": _num(lat.mean()), "p50": _num(np.median(lat)),
                               "p90": _num(np.quantile(lat, 0.9)), "front": pol in on})
            cdf[str(c)] = sorted(curves, key=lambda cv: cv["p"])
    return {"policies": policies, "configs": configs, "fields": fields, "points": rows, "x_axes": x_axes,
            "y_axis": y_axis, "mode_colours": MODE_COLOURS, "cdf": cdf}


def write_interactive(path: Path, ctx) -> Path:

    data = interactive_data(ctx)
    cap = ("Filled points are on this configuration's 4-D front (quality ↑, latency ↓, cloud tokens ↓, bytes up ↓), "
           "coloured by privacy mode (circle token-only, square features, triangle raw); hollow grey points are "
           "dominated; stars are the baselines; the thin step line is the front of this projection. Numbers are the "
           "policies' numbers in the key." if ctx.qcol else
           "No quality axis (a sweep without agreement columns or trace): latency against a cost; filled points are "
           "on the 3-D front (latency, cloud tokens, bytes up).")
    html = render("interactive.html.j2", title=ctx.prov.get("trace") or "results", prov_line=ctx.prov_line,
                  policies=data["policies"], data=data, pareto_caption=cap, has_cdf=bool(data["cdf"]),
                  no_cdf_note="A sweep summary has no per-caption latencies, so there are no latency distributions "
                              "here; the Pareto view's latency axis is the sweep's mean.")
    path.write_text(html, encoding="utf-8")
    return path
