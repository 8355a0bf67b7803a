"""`sectrace report`: from results (and optionally the trace) to a self-contained HTML report and figures.

Each section is a small function that writes its figures and CSV tables and returns the data its
template shows; ``templates/`` (Jinja2, package data) turns that data into HTML. The HTML embeds
every figure as a data URI and carries its styles inline, so it opens from disk with no server and
no network; ``interactive.html`` beside it shows the Pareto and latency figures with hover (inline
SVG and JavaScript, equally offline). Every table and figure says where its numbers come from: the
trace, the policies, the cost and network profiles, and the tool versions.

Results are either `simulate`'s per-utterance rows or a `sweep` summary (one row per policy and
configuration); a sweep has no captions or per-utterance latencies, so its quality axis is
agreement with the cloud-only caption and its report has no CDFs or reference metrics.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from ..fsio import write_table
from ..version import __version__
from . import figures
from .inputs import check_results, normalise_configs, results_kind
from .pareto import pareto_table
from .privacy import modes_side_by_side, privacy_table
from .render import render
from .style import PolicyStyle, assign
from .sweep import has_agreement, pick_configs, sweep_points
from .tables import column_format, fmt, policy_points, quality_x100, table1, table2


@dataclass
class ReportInputs:
    """Everything a report is built from; only ``results`` is required."""

    results: pl.DataFrame
    results_path: str = ""
    trace_path: str | None = None
    trace_manifest: dict | None = None
    quality: object | None = None  # reports.quality.QualityResult
    standing: pl.DataFrame | None = None  # reports.reference_points.standing: captions between two reference points
    agreement: pl.DataFrame | None = None  # sweeps: per-policy agreement with cloud-only (reports.sweep)
    exposure: pl.DataFrame | None = None
    breakdown: pl.DataFrame | None = None  # per policy × part mean seconds, at one configuration
    breakdown_note: str = ""
    break_even: tuple | None = None  # (rtts, speeds, {policy: ratio grid}, current rtt)
    break_even_note: str = ""
    validation: pl.DataFrame | None = None  # `sectrace validate` rows: measured vs predicted per utterance
    validation_summary: pl.DataFrame | None = None
    validation_facts: dict | None = None
    fleet: pl.DataFrame | None = None  # `sectrace fleet --out` rows (arrival-rate sweeps): the throughput section
    quality_note: str = ""  # why there are no reference metrics, when the caller knows (e.g. --no-quality)
    extra_sections: list = field(default_factory=list)  # (title, self-contained HTML), e.g. the study's Table 2
    notes: list[str] = field(default_factory=list)


# --- what the templates receive ----------------------------------------------------------------
@dataclass
class Table:
    """A table as text cells (formatted, not escaped) with optional two-level headers."""

    headers: list[str]
    rows: list[list[str]]
    dim: list[bool]
    groups: list[tuple[str, int]] | None = None
    numeric: list[bool] = field(default_factory=list)
    swatches: dict[int, PolicyStyle] = field(default_factory=dict)  # row index → style drawn before the first cell
    cis: list[list[str]] = field(default_factory=list)  # per cell: its 95 % interval as text, "" for none
    wide: list[bool] = field(default_factory=list)  # per column: holds long labels (policy names)


@dataclass
class Figure:
    name: str
    png: bytes
    alt: str
    caption: str

    @property
    def src(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


def make_table(df: pl.DataFrame, cols: list[str] | None = None, grey_col: str | None = None,
               styles: dict[str, PolicyStyle] | None = None) -> Table:
    """Cells formatted by tables.COLUMNS (new columns by their name); rows greyed where ``grey_col`` is false;
    with ``styles``, a ``#`` column (the policy's number) first. A column ``X`` shown with ``X_lo`` and ``X_hi``
    beside it in ``df`` (simulate's 95 % intervals) gets its interval under the value; the bounds themselves
    are not shown as columns of their own."""
    cols = [c for c in (cols or df.columns) if c in df.columns and c != grey_col]
    cols = [c for c in cols if not (c[-3:] in ("_lo", "_hi") and c[:-3] in cols)]
    with_ci = {c for c in cols if f"{c}_lo" in df.columns and f"{c}_hi" in df.columns}
    rows, dim, sw, cis = [], [], {}, []
    fmts = [column_format(c, df.schema[c]) for c in cols]
    for i, r in enumerate(df.iter_rows(named=True)):
        cells = [fmt(r[c], kind) for c, (_, kind) in zip(cols, fmts)]
        ci = [f"{fmt(r[c + '_lo'], kind)}–{fmt(r[c + '_hi'], kind)}"
              if c in with_ci and r[c + "_lo"] is not None and r[c + "_hi"] is not None else ""
              for c, (_, kind) in zip(cols, fmts)]
        if styles is not None:
            st = styles.get(r.get("policy"))
            cells.insert(0, str(st.number) if st else "")
            ci.insert(0, "")
            if st:
                sw[i] = st
        rows.append(cells)
        cis.append(ci)
        dim.append(bool(grey_col) and not r.get(grey_col))
    headers = [h for h, _ in fmts]
    numeric = [k not in ("text", "bool") for _, k in fmts]
    wide = [c in ("policy", "system", "shape") for c in cols]  # long labels: wrap late, scroll the table instead
    groups = None
    if any("|" in c for c in cols):
        groups, heads = [], []
        for c, h in zip(cols, headers):
            top, _, sub = c.partition("|")
            label = column_format(top, df.schema[c])[0] if sub else ""
            if groups and sub and groups[-1][0] == label:
                groups[-1] = (label, groups[-1][1] + 1)
            else:
                groups.append((label, 1))
            heads.append(sub or h)
        headers = heads
    if styles is not None:
        headers.insert(0, "#")
        numeric.insert(0, True)
        wide.insert(0, False)
        if groups:
            groups.insert(0, ("", 1))
    return Table(headers, rows, dim, groups, numeric, sw, cis if with_ci else [], wide)


def write_csv(df: pl.DataFrame, path: Path) -> None:
    """CSV of a table; list columns (e.g. acceptance per draft position) become space-separated text (fsio's rule)."""
    write_table(df, path)


# --- shared facts ----------------------------------------------------------------------------
@dataclass
class Ctx:
    inp: ReportInputs
    res: pl.DataFrame
    kind: str  # "simulate" or "sweep"
    points: pl.DataFrame
    front: pl.DataFrame
    qcol: str | None
    qlabel: str
    styles: dict[str, PolicyStyle]
    configs: pl.DataFrame  # one row per configuration
    panels: list[int]  # configurations drawn as panels
    fig_dir: Path
    tab_dir: Path
    prov: dict
    prov_line: str

    def conf_text(self, c: int) -> str:
        return config_text(self.configs.filter(pl.col("config") == c).row(0, named=True))

    def panel_title(self, c: int) -> str:
        r = self.configs.filter(pl.col("config") == c).row(0, named=True)
        bits = [f"config {c}", f"RTT {1000 * r['rtt_s']:g} ms"]
        if r.get("network") not in (None, "custom"):
            bits.append(str(r["network"]))
        for key, name in (("edge_speedup", "edge"), ("cloud_speedup", "cloud")):
            if r.get(key) is not None and self.configs[key].n_unique() > 1:
                bits.append(f"{name} ×{r[key]:g}")
        return " · ".join(bits)


CONFIG_COLS = ("config", "rtt_s", "up_Bps", "down_Bps", "cost_source", "network", "edge_speedup", "cloud_speedup")


def config_text(r: dict) -> str:
    """A configuration in words: network, device speed-ups and where its costs come from."""
    parts = [f"RTT {1000 * r['rtt_s']:g} ms"]
    if r.get("up_Bps") is not None:
        parts.append(f"uplink {r['up_Bps'] * 8 / 1e6:g} Mbit/s")
    if r.get("down_Bps") is not None:
        parts.append(f"downlink {r['down_Bps'] * 8 / 1e6:g} Mbit/s")
    if r.get("network") not in (None, "custom"):
        parts.append(f"network preset {r['network']}")
    for key, name in (("edge_speedup", "edge"), ("cloud_speedup", "cloud")):
        if r.get(key) is not None and r[key] != 1:
            parts.append(f"{name} ×{r[key]:g}")
    text = ", ".join(parts)
    return text + (f"; costs: {r['cost_source']}" if r.get("cost_source") else "")


def front_points(res: pl.DataFrame, quality=None, agreement: pl.DataFrame | None = None):
    """(per-policy points, points with ``on_front``, quality column, its label) for normalised results.

    Quality is CIDEr-D ×100 against the references when captions were scored, else similarity to
    the cloud-only caption; with neither (a sweep without its trace) the front has three axes."""
    kind = results_kind(res)
    points = policy_points(res) if kind == "simulate" else sweep_points(res)
    if agreement is not None:
        from .sweep import attach_agreement

        points = attach_agreement(points, agreement)
    qual = quality.per_policy if quality is not None else None
    if qual is not None and qual.height:
        q = quality_x100(qual.drop([c for c in ("agree_cloud_exact", "agree_cloud_similarity") if c in qual.columns]))
        points = points.join(q, on=[c for c in ("trace", "policy") if c in points.columns and c in q.columns],
                             how="left")
        qcol, qlabel = "cider_d_x100", "CIDEr-D ×100 (vs references)"
    elif has_agreement(points):
        qcol, qlabel = "agree_cloud_similarity", "similarity to the cloud-only caption"
    else:
        qcol, qlabel = None, ""
    return points, pareto_table(points, qcol), qcol, qlabel


# --- sections: each returns the data its template shows ------------------------------------------
def _provenance(inp: ReportInputs, res: pl.DataFrame, kind: str, configs: pl.DataFrame) -> tuple[dict, str]:
    first = res.row(0, named=True)
    trace = first.get("trace") or (inp.trace_manifest or {}).get("name") or (
        Path(inp.trace_path).name if inp.trace_path else None)
    prov = {
        "results": inp.results_path, "results_kind": kind, "trace": trace, "trace_path": inp.trace_path,
        "synthetic": bool(first.get("synthetic")) if "synthetic" in res.columns else None,
        "simulated_with": sorted(set(res["tool_version"].to_list())) if "tool_version" in res.columns else None,
        "report_tool_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "policies": res["policy"].n_unique(), "configurations": configs.to_dicts(),
        "drafter": (inp.trace_manifest or {}).get("drafter", {}).get("name"),
        "verifier": (inp.trace_manifest or {}).get("verifier", {}).get("name"),
        "tokenizer": getattr(inp.quality, "tokenizer", None),
        "caption_score_scale": "×100 (pycocoevalcap's BLEU/METEOR/ROUGE-L 0–1 and CIDEr-D 0–10, times 100)",
    }
    line = (f"trace {trace or 'not recorded'}" + (f" ({inp.trace_path})" if inp.trace_path else "")
            + f"; results {inp.results_path} ({'sweep summary' if kind == 'sweep' else 'per-utterance'}); "
            + f"simulated by sectrace {', '.join(prov['simulated_with'] or ['(version not recorded)'])}"
            + f"; report by sectrace {__version__}")
    return prov, line


def _policy_key(ctx: Ctx) -> dict:
    pol = ctx.points.select("policy", "privacy").unique(subset=["policy"], maintain_order=True)
    on_any = set(ctx.front.filter(pl.col("on_front"))["policy"].to_list())
    df = pol.with_columns(pl.col("policy").is_in(list(on_any)).alias("on_front")) \
        .sort(pl.col("policy").map_elements(lambda p: ctx.styles[p].number, return_dtype=pl.Int64))
    return {"table": make_table(df, ["policy", "privacy", "on_front"], styles=ctx.styles)}


def _pareto(ctx: Ctx) -> dict:
    front = ctx.front
    figs = []
    panels = [(c, ctx.panel_title(c)) for c in ctx.panels]
    n_cfg = ctx.configs.height
    shown = "" if len(panels) == n_cfg else (
        f" {len(panels)} of the {n_cfg} configurations are drawn (spread over the sweep's order); every one is in "
        "tables/pareto.csv and interactive.html.")
    labels = ("Each point carries its policy's number (key beside the plot and at the top of the report); points on the "
              "same spot share one label.")
    whiskers = [name for col, name in (("latency_s", "latency"), ("quality", "quality"), ("cloud_tokens", "cloud tokens"),
                                       ("bytes_up", "bytes up"))
                if f"{col}_lo" in front.columns and front[f"{col}_lo"].drop_nulls().len()]
    if whiskers:
        labels += f" Grey whiskers: 95 % intervals ({', '.join(whiskers)}; bootstrap over utterances)."
    if ctx.qcol is not None:
        fig = figures.pareto_small_multiples(front, panels, ctx.styles, x=("latency_s", "mean latency per caption (s)", -1),
                                             y=("quality", ctx.qlabel, +1))
        figs.append(Figure("pareto_latency", figures.save(fig, ctx.fig_dir, "pareto_latency"),
                           "Pareto fronts: quality against mean latency, one panel per configuration",
                           f"Quality ({ctx.qlabel}) against mean latency, one panel per configuration. Filled points "
                           "are on that configuration's 4-D front (quality ↑, latency ↓, cloud tokens ↓, bytes up ↓), "
                           "coloured by privacy mode; hollow grey points are dominated; stars are the baselines; the "
                           f"thin step line is the 2-D front of the projection. {labels}{shown} Files: "
                           f"figures/pareto_latency.png/.svg/.pdf. {ctx.prov_line}."))
        anyfront = front.group_by("policy", maintain_order=True).agg(pl.col("on_front").any().alias("on_front_any"))
        pts = front.filter(pl.col("config") == front["config"][0]).join(anyfront, on="policy")
        fig = figures.pareto_costs(pts, ctx.styles, ctx.qlabel)
        figs.append(Figure("pareto_costs", figures.save(fig, ctx.fig_dir, "pareto_costs"),
                           "Pareto fronts: quality against cloud tokens and bytes uploaded",
                           "Quality against cloud tokens and bytes uploaded per caption. Neither depends on the network "
                           "or the devices, so one figure serves every configuration: a point is filled when it is on "
                           f"the 4-D front in at least one configuration. {labels} Files: "
                           f"figures/pareto_costs.png/.svg/.pdf. {ctx.prov_line}."))
    else:
        fig = figures.pareto_small_multiples(front, panels, ctx.styles,
                                             x=("cloud_tokens", "cloud tokens per caption", -1),
                                             y=("latency_s", "mean latency per caption (s)", -1))
        figs.append(Figure("pareto_latency", figures.save(fig, ctx.fig_dir, "pareto_latency"),
                           "Pareto fronts without a quality axis: latency against cloud tokens",
                           "No quality axis: these sweep results carry no agreement with the cloud-only caption and no "
                           "trace was given to replay it. The front has three axes (latency ↓, cloud tokens ↓, bytes up "
                           f"↓); filled points are on it. {labels}{shown} {ctx.prov_line}."))
    write_csv(front, ctx.tab_dir / "pareto.csv")
    cols = ["policy", "config", "rtt_s", "network", "edge_speedup", "cloud_speedup", "quality", "latency_s",
            "cloud_tokens", "bytes_up", "covered", "utterances"]
    cols = [c for c in cols if c in front.columns and not (c in ("network", "edge_speedup", "cloud_speedup")
                                                              and front[c].n_unique() == 1)]
    shown_rows = front.filter(pl.col("config").is_in(ctx.panels)).sort("config", "latency_s", nulls_last=True)
    table = make_table(shown_rows.rename({"quality": ctx.qlabel or "quality"}) if ctx.qcol else shown_rows,
                       [ctx.qlabel if c == "quality" and ctx.qcol else c for c in cols if c != "quality" or ctx.qcol],
                       "on_front", ctx.styles)
    return {"quality_label": ctx.qlabel, "figures": figs, "table": table, "shown_note": shown,
            "kind": ctx.kind, "scale_note": ctx.qcol == "cider_d_x100"}


def _quality(ctx: Ctx) -> dict:
    q = ctx.inp.quality
    t1 = table1(q.per_policy if q is not None else None)
    write_csv(t1, ctx.tab_dir / "table1_quality.csv")
    if q is not None:
        write_csv(q.per_policy, ctx.tab_dir / "quality_per_policy.csv")
        q.per_caption.write_parquet(ctx.tab_dir / "quality_per_caption.parquet")
    st = ctx.inp.standing
    if st is not None:
        write_csv(st, ctx.tab_dir / "reference_points.csv")
    return {"available": q is not None, "tokenizer": getattr(q, "tokenizer", ""), "notes": list(getattr(q, "notes", []) or []),
            "table": make_table(t1), "kind": ctx.kind, "agreement": ctx.qcol == "agree_cloud_similarity",
            "why": ctx.inp.quality_note, "standing": make_table(st) if st is not None else None}


def _latency(ctx: Ctx) -> dict:
    tables = []
    for c in ctx.panels:
        t2 = table2(ctx.points, c, with_study=(c == ctx.panels[0]))
        write_csv(t2, ctx.tab_dir / f"table2_latency_config{c}.csv")
        t2 = t2.rename({"system": "policy"})
        tables.append({"config": c, "text": ctx.conf_text(c), "table": make_table(t2, styles=ctx.styles)})
    cdf = None
    if ctx.kind == "simulate":
        on = {c: set(ctx.front.filter((pl.col("config") == c) & pl.col("on_front"))["policy"].to_list())
              for c in ctx.panels}
        fig = figures.latency_cdf(ctx.res, [(c, ctx.panel_title(c)) for c in ctx.panels], ctx.styles, on)
        cdf = Figure("latency_cdf", figures.save(fig, ctx.fig_dir, "latency_cdf"), "latency CDFs per configuration",
                     "Share of captions done within a latency, one panel per configuration, one curve per policy in its "
                     "own colour and line style (legend on the right, numbered as everywhere in the report); thick "
                     "curves are on that configuration's Pareto front or are baselines. Files: "
                     f"figures/latency_cdf.png/.svg/.pdf. {ctx.prov_line}.")
    return {"tables": tables, "cdf": cdf, "kind": ctx.kind, "p": "p90" if ctx.kind == "simulate" else "p95"}


def _acceptance(ctx: Ctx) -> dict | None:
    """Acceptance by draft position, the accepted-length histogram and the metrics against k (reports.acceptance);
    None when the results hold no policy that drafts and verifies."""
    from . import acceptance_figures as af
    from .acceptance import acceptance_data

    pos, hist, vk, note = acceptance_data(ctx.res)
    if note:
        return {"figures": [], "note": f"acceptance figures left out: {note}", "table": None}
    if not (pos.height or hist.height or vk.height):
        return None
    figs, files = [], "Files: figures/{0}.png/.svg/.pdf, tables/{0}.csv."
    key = "one line per policy in its own colour and dash, numbered as everywhere in the report (key on the right)"
    if pos.height:
        write_csv(pos, ctx.tab_dir / "acceptance_by_position.csv")
        figs.append(Figure("acceptance_by_position", figures.save(af.by_position(pos, ctx.styles), ctx.fig_dir,
                                                                  "acceptance_by_position"),
                           "acceptance rate by draft position, one panel per k",
                           "Acceptance rate by draft position: for each policy that drafts and asks the cloud to verify, "
                           "the share of its verify calls that accepted draft position i, i = 1..k (the results' "
                           "acceptance_rate_per_pos: Σ calls that accepted position i / Σ verify calls over the covered "
                           f"utterances); one panel per k, {key}, set a little apart along x so equal values stay "
                           "visible. Acceptance is a prefix, so a line never rises. The counts do not depend on the "
                           "network or devices; the results give this list no interval. "
                           f"{files.format('acceptance_by_position')} {ctx.prov_line}."))
    if hist.height:
        write_csv(hist, ctx.tab_dir / "accepted_length_histogram.csv")
        figs.append(Figure("accepted_length_histogram", figures.save(af.accepted_histogram(hist, ctx.styles),
                                                                     ctx.fig_dir, "accepted_length_histogram"),
                           "accepted-length histogram per policy, one panel per k",
                           "Accepted-length histogram: for each policy, the share of its verify calls that accepted "
                           "exactly j drafted tokens, j = 0..k (the correction or bonus token each call adds is not "
                           "counted), from the per-utterance accepted_per_pos counts over the covered utterances "
                           "(calls accepting at least j minus those accepting at least j + 1); points joined by lines, "
                           f"one panel per k, {key}, set a little apart along x. A policy's mean acceptance length "
                           f"is 1 + the mean of its histogram. {files.format('accepted_length_histogram')} {ctx.prov_line}."))
    table = None
    if vk.height:
        write_csv(vk, ctx.tab_dir / "acceptance_vs_k.csv")
        panels = [(c, ctx.panel_title(c)) for c in ctx.panels if c in set(vk["config"].to_list())][:3]
        shown = "" if len(panels) == ctx.configs.height else (
            f" {len(panels)} of the {ctx.configs.height} configurations have a row; every one is in "
            "tables/acceptance_vs_k.csv.")
        figs.append(Figure("acceptance_vs_k", figures.save(af.versus_k(vk, panels, ctx.styles), ctx.fig_dir,
                                                           "acceptance_vs_k"),
                           "mean acceptance length, latency and speedup against k, per gate and acceptance rule",
                           "Against k, one line per family of policies equal in every knob but k (its own colour and "
                           "dash; the legend names its gate and acceptance rule, and any other knob that varies): mean "
                           "acceptance length (1 + Σ accepted / Σ verify calls; it does not depend on the configuration, "
                           "so it is drawn once), mean latency per caption, and speedup vs edge-only (Σ edge-only "
                           "latency / Σ this policy's latency over the utterances both cover; the dotted line is 1, as "
                           "fast as edge-only), one row per configuration. Whiskers: 95 % bootstrap intervals over "
                           "utterances (the results' _lo/_hi columns); a point without whiskers has no interval (e.g. "
                           "a resample drew no verify call). Families are set slightly apart along k so whiskers do not "
                           f"cover one another; each point carries its policy's number.{shown} "
                           f"{files.format('acceptance_vs_k')} {ctx.prov_line}."))
        c0 = panels[0][0] if panels else int(vk["config"][0])
        table = {"config": c0, "text": ctx.conf_text(c0),
                 "table": make_table(vk.filter(pl.col("config") == c0).drop("config"), styles=ctx.styles)}
    return {"figures": figs, "note": "", "table": table}


def _breakdown(ctx: Ctx) -> dict:
    inp = ctx.inp
    bd, note = inp.breakdown, inp.breakdown_note
    if ctx.kind == "sweep" and bd is None:
        parts = [c for c in ctx.res.columns if c.startswith("t_") and c.endswith("_s")]
        c0 = ctx.panels[0]
        if parts:
            bd = (ctx.res.filter(pl.col("config") == c0).select("policy", *parts)
                  .rename({p: p[2:-2] for p in parts}))
            note = (f"Configuration {c0}: {ctx.conf_text(c0)}. Means over the covered utterances, from the sweep's own "
                    "t_* columns; they add up to its mean latency.")
    if bd is None or not bd.height:
        return {"figure": None, "note": note or "not available", "table": None}
    fig = figures.breakdown(bd, "Where the time goes (mean per caption)", ctx.styles)
    write_csv(bd, ctx.tab_dir / "overhead_breakdown.csv")
    return {"figure": Figure("overhead_breakdown", figures.save(fig, ctx.fig_dir, "overhead_breakdown"),
                             "overhead breakdown", f"{note} {ctx.prov_line}."),
            "note": note, "table": make_table(bd, styles=ctx.styles)}


def _break_even(ctx: Ctx) -> dict | None:
    inp = ctx.inp
    if inp.break_even is None or not inp.break_even[2]:
        return {"figure": None, "note": inp.break_even_note} if inp.break_even_note else None
    rtts, speeds, ratios, rtt0 = inp.break_even
    fig, drawn = figures.break_even(rtts, speeds, ratios, rtt0, "Break-even against edge-only", ctx.styles)
    cap = break_even_caption(drawn, {n: (ctx.styles[n].number if n in ctx.styles else n) for n in drawn},
                             rtt0 if rtts.min() <= rtt0 <= rtts.max() else None, inp.break_even_note)
    return {"figure": Figure("break_even", figures.save(fig, ctx.fig_dir, "break_even"), "break-even maps",
                             f"{cap} {ctx.prov_line}."), "note": ""}


def break_even_caption(drawn: dict, numbers: dict, rtt0: float | None, note: str = "") -> str:
    """What the break-even figure shows, true to what was drawn: the black line is mentioned only for maps
    that cross ratio 1 (figures.break_even draws it only there); maps entirely on one side say so.

    ``drawn``: policy → (min ratio, max ratio, contour drawn?); ``numbers``: policy → its number;
    ``rtt0``: the results' RTT when its dot is on the maps, else None."""
    crossing = [numbers[n] for n, d in drawn.items() if d[2]]
    cap = [note] if note else []
    cap.append("Green cells: the policy is faster than edge-only; red: slower (log colour scale centred on 1).")
    if crossing:
        cap.append(f"The black line is the break-even (ratio 1), drawn for polic{'y' if len(crossing) == 1 else 'ies'} "
                   f"{', '.join(map(str, crossing))}: on its green side the hybrid beats drafting alone.")
    for n, (lo, hi, crosses) in drawn.items():
        if crosses:
            continue
        side = "slower" if lo >= 1 else "faster"
        bound = f"ratio ≥ {lo:.2f}" if lo >= 1 else f"ratio ≤ {hi:.2f}"
        cap.append(f"Policy {numbers[n]} is {side} than edge-only everywhere on this grid ({bound}), so its map has "
                   "no break-even line.")
    if rtt0 is not None:
        cap.append(f"The dot marks the results' own RTT ({1000 * rtt0:g} ms) at speed-up 1×.")
    return " ".join(cap)


def _validation(ctx: Ctx) -> dict | None:
    inp = ctx.inp
    if inp.validation is None or not inp.validation.height:
        return None
    f = inp.validation_facts or {}
    fig = figures.validation(inp.validation, "Simulated vs measured latency (live runs)")
    write_csv(inp.validation_summary, ctx.tab_dir / "validation.csv")
    med = f.get("median_ape_latency")
    tgt = f.get("target_median_ape_latency", 0.05)
    verdict = ("" if med is None else f"Median absolute error on total latency: {100 * med:.2f}% "
               f"({'meets' if med <= tgt else 'misses'} the {100 * tgt:.0f}% target); TTFT "
               f"{100 * (f.get('median_ape_ttft') or float('nan')):.1f}%. ")
    if f.get("noise_median_ad") is not None:
        verdict += (f"Identical edge-only runs differed from their mean by {100 * f['noise_median_ad']:.1f}% "
                    f"(median; at most {100 * f['noise_max_ad']:.1f}%), this machine's own noise. ")
    text = (f"{verdict}Live captions equal to the replay: {f.get('captions_match')}/{f.get('runs')} (mismatches are "
            f"not timed). Shaped path: {f.get('shaper')}; edge cores {f.get('edge_cpus')}, service cores "
            f"{f.get('cloud_cpus')}; models {f.get('drafter')} / {f.get('verifier')}.")
    return {"text": text, "figure": Figure("validation", figures.save(fig, ctx.fig_dir, "validation"),
                                           "simulated vs measured latency",
                                           "Each point is one live run; the diagonal is no error, the band ±5 %."),
            "table": make_table(inp.validation_summary)}


def _fleet(ctx: Ctx) -> dict | None:
    from . import fleet

    if ctx.inp.fleet is None or not ctx.inp.fleet.height:
        return None
    curves = fleet.fleet_curves(ctx.inp.fleet)
    write_csv(curves, ctx.tab_dir / "fleet.csv")
    cols = ["policy", "rtt_s", *fleet.SHOWN]
    out = {"table": make_table(curves, [c for c in cols if c in curves.columns]),
           "text": f"{curves.height} fleet run(s) of {curves['policy'].n_unique()} policy(ies) "
                   f"(`sectrace fleet --out`), each summarised as `sectrace fleet` prints it.", "figure": None}
    if curves["arrival_rate"].is_not_null().any():
        fig = fleet.figure(curves, "Throughput and response time (fleet, Poisson arrivals)")
        out["figure"] = Figure("fleet", figures.save(fig, ctx.fig_dir, "fleet"), "throughput vs response time",
                               fleet.caption(curves))
    return out


def _privacy(ctx: Ctx) -> dict:
    inp = ctx.inp
    if ctx.kind == "sweep":
        cols = ["policy", "privacy", "cloud_calls", "cloud_tokens", "bytes_up", "bytes_down"]
        t = ctx.points.filter(pl.col("config") == ctx.panels[0])
        write_csv(t.select([c for c in cols if c in t.columns]), ctx.tab_dir / "privacy.csv")
        return {"kind": "sweep", "table": make_table(t, cols, styles=ctx.styles)}
    priv = privacy_table(ctx.res, inp.exposure)
    write_csv(priv, ctx.tab_dir / "privacy.csv")
    side = modes_side_by_side(priv)
    write_csv(side, ctx.tab_dir / "privacy_modes.csv")
    fig = figures.privacy_bars(priv, "What the cloud learns, per policy", ctx.styles)
    cols = ["policy", "privacy", "utterances", "contact_share", "cloud_calls", "cloud_seen_tokens",
            "caption_share_seen", "emotion_words_exposed", "bytes_up", "audio_bytes_up"]
    return {"kind": "simulate", "exact": inp.exposure is not None,
            "figure": Figure("privacy", figures.save(fig, ctx.fig_dir, "privacy"), "privacy",
                             "Per policy (numbered as everywhere in the report): share of utterances that contact the "
                             "cloud, of caption tokens and of emotion words the cloud sees." +
                             ("" if inp.exposure is not None else " Tokens and emotion words need --trace: bars absent.")
                             + f" {ctx.prov_line}."),
            "table": make_table(priv, [c for c in cols if c in priv.columns], styles=ctx.styles),
            "side": make_table(side.select("shape", *sorted(
                [c for c in side.columns if "|" in c],
                key=lambda c: ([c2.split("|")[0] for c2 in side.columns if "|" in c2].index(c.split("|")[0]),
                               c.split("|")[1] != "token-only"))).rename({"shape": "policy shape"}))}


# --- the report -------------------------------------------------------------------------------
def build_report(inp: ReportInputs, out_dir: Path, progress=None) -> Path:
    """Write OUT_DIR/report.html, OUT_DIR/interactive.html, OUT_DIR/figures/*.{png,svg,pdf} and OUT_DIR/tables/*.csv;
    return the HTML path."""
    from .interactive import write_interactive

    kind = check_results(inp.results, inp.results_path)
    res = normalise_configs(inp.results)
    out_dir = Path(out_dir)
    fig_dir, tab_dir = out_dir / "figures", out_dir / "tables"
    tab_dir.mkdir(parents=True, exist_ok=True)
    tick = progress or (lambda *_, **__: None)

    points, front, qcol, qlabel = front_points(res, inp.quality, inp.agreement)
    configs = res.select([c for c in CONFIG_COLS if c in res.columns]).unique(subset=["config"], maintain_order=True)
    prov, prov_line = _provenance(inp, res, kind, configs)
    styles = assign(points["policy"].to_list())
    ctx = Ctx(inp, res, kind, points, front, qcol, qlabel, styles, configs,
              pick_configs(configs, figures.MAX_PANELS), fig_dir, tab_dir, prov, prov_line)
    sections = {"key": _policy_key(ctx), "pareto": _pareto(ctx)}
    tick(1, "Pareto fronts")
    sections.update(quality=_quality(ctx), latency=_latency(ctx), acceptance=_acceptance(ctx))
    tick(1, "tables 1-2 and latency CDFs")
    sections.update(breakdown=_breakdown(ctx), break_even=_break_even(ctx), validation=_validation(ctx),
                    fleet=_fleet(ctx))
    tick(1, "breakdown and break-even")
    sections["privacy"] = _privacy(ctx)
    tick(1, "privacy")
    write_interactive(out_dir / "interactive.html", ctx)
    synthetic = bool(prov["synthetic"])
    doc = render("report.html.j2", prov=prov, prov_line=prov_line, notes=inp.notes, synthetic=synthetic,
                 n_policies=res["policy"].n_unique(), n_configs=configs.height,
                 n_utts=res["utt_id"].n_unique() if kind == "simulate" else None, kind=kind,
                 prov_rows=[(k, json.dumps(v, default=str, ensure_ascii=False)) for k, v in prov.items()],
                 extra_sections=inp.extra_sections, **sections)
    path = out_dir / "report.html"
    path.write_text(doc, encoding="utf-8")
    (out_dir / "provenance.json").write_text(json.dumps(prov, indent=2, default=str, ensure_ascii=False),
                                             encoding="utf-8")
    tick(1, "HTML")
    return path


__all__ = ["Figure", "ReportInputs", "Table", "build_report", "front_points", "make_table", "render"]
