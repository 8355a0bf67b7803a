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

from .style import BASELINES, MODE_COLOURS
from .tables import column_format

#: Columns shown on hover, in this order, when the points have them; other numeric columns follow.
HOVER = ("quality", "latency_s", "latency_p50_s", "latency_p90_s", "latency_p95_s", "ttft_s", "cloud_tokens",
         "cloud_calls", "bytes_up", "audio_bytes_up", "agree_cloud_similarity", "agree_cloud_exact", "cider_d_x100",
         "covered", "utterances")
#: Not worth a hover line: keys, configuration columns (the selector says them) and the policy's own fields.
SKIP = {"policy", "config", "trace", "trace_path", "k", "gate", "accept", "bonus", "privacy", "cloud_cache",
        "adaptive", "max_new_tokens", "rtt_s", "up_Bps", "down_Bps", "cost_source", "network", "edge_speedup",
        "cloud_speedup", "on_front", "synthetic", "tool_version", "n_scored"}


def _num(v):
    """JSON-safe number rounded to 5 significant digits (None for missing/NaN/inf)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return bool(v)
    v = float(v)
    if not math.isfinite(v):
        return None
    return float(f"{v:.5g}")


def interactive_data(ctx) -> dict:
    """The JSON the page draws from: policies with their styles, configurations, hover fields, points, CDFs."""
    from .figures import cdf_points

    front = ctx.front
    styles = ctx.styles
    extra = [c for c in front.columns if c not in SKIP and c not in HOVER and not c.startswith("t_")
             and front.schema[c].is_numeric()]
    # the quality column is shown once, as "quality" under its label
    cols = [c for c in HOVER if c in front.columns and (c != "quality" or ctx.qcol) and c != ctx.qcol]
    cols += [c for c in extra if c != ctx.qcol]
    fields = []
    for c in cols:
        head, kind = column_format(c)
        fields.append([c, ctx.qlabel if c == "quality" else head, kind])
    rows = []
    for r in front.select("policy", "config", "on_front", *cols).iter_rows():
        st = styles.get(r[0])
        if st is None:
            continue
        rows.append([st.number, int(r[1]), bool(r[2]), *[_num(v) for v in r[3:]]])
    policies = [{"n": st.number, "name": name, "colour": st.colour, "dash": st.svg_dash,
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
    from .build import render

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
