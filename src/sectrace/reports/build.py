"""`sectrace report`: from results (and optionally the trace) to a self-contained HTML report and figures.

The HTML embeds every figure as a data URI and carries its styles inline, so it opens from disk
with no server and no network. Every table and figure says where its numbers come from: the
trace, the policies, the cost and network profiles, and the tool versions.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from ..version import __version__
from . import figures
from .inputs import check_results, normalise_configs
from .pareto import pareto_table
from .privacy import modes_side_by_side, privacy_table
from .tables import policy_points, table1, table2


@dataclass
class ReportInputs:
    """Everything a report is built from; only ``results`` is required."""

    results: pl.DataFrame
    results_path: str = ""
    trace_path: str | None = None
    trace_manifest: dict | None = None
    quality: object | None = None  # reports.quality.QualityResult
    exposure: pl.DataFrame | None = None
    breakdown: pl.DataFrame | None = None  # per policy × part mean seconds, at one configuration
    breakdown_note: str = ""
    break_even: tuple | None = None  # (rtts, speeds, {policy: ratio grid}, current rtt)
    break_even_note: str = ""
    validation: pl.DataFrame | None = None  # `sectrace validate` rows: measured vs predicted per utterance
    validation_summary: pl.DataFrame | None = None
    validation_facts: dict | None = None
    notes: list[str] = field(default_factory=list)


def _fmt(v, col: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if "bytes" in col:
            for unit, size in (("MB", 1e6), ("kB", 1e3)):
                if abs(v) >= size:
                    return f"{v / size:.1f} {unit}"
            return f"{v:.0f} B"
        if "share" in col or col in ("emotion_words_exposed", "emotion consistency", "agree_cloud_exact",
                                     "agree_cloud_similarity", "emotion_consistency", "embedding similarity"):
            return f"{100 * v:.0f}%"
        if col in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"):
            return f"{v:.2f}"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return html.escape(str(v))


def _table(df: pl.DataFrame, grey_col: str | None = None, cols: list[str] | None = None) -> str:
    cols = cols or [c for c in df.columns if c != grey_col]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in df.iter_rows(named=True):
        cls = ' class="dominated"' if grey_col and not r.get(grey_col) else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_fmt(r[c], c)}</td>" for c in cols) + "</tr>")
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:12px;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}tr.dominated td{color:#aaa}
.prov{background:#f8f8f8;border-left:4px solid #888;padding:.5em 1em;font-size:12px}
.warn{background:#fff4e0;border-left:4px solid #f0a000;padding:.5em 1em}
.cap{font-size:12px;color:#555}img{max-width:100%}code{font-size:12px}
"""


def front_points(res: pl.DataFrame, quality=None):
    """(per-policy points, points with ``on_front``, quality column, its label) for normalised results."""
    points = policy_points(res)
    qual = quality.per_policy if quality is not None else None
    if qual is not None and qual.height:
        points = points.join(qual.drop([c for c in ("agree_cloud_exact", "agree_cloud_similarity") if c in qual.columns]),
                             on=[c for c in ("trace", "policy") if c in points.columns], how="left")
        qcol, qlabel = "cider_d", "CIDEr-D (vs references)"
    else:
        qcol, qlabel = "agree_cloud_similarity", "similarity to the cloud-only caption"
    return points, pareto_table(points, qcol), qcol, qlabel


def build_report(inp: ReportInputs, out_dir: Path, progress=None) -> Path:
    """Write OUT_DIR/report.html, OUT_DIR/figures/*.{png,svg,pdf} and OUT_DIR/tables/*.csv; return the HTML path."""
    check_results(inp.results, inp.results_path)
    res = normalise_configs(inp.results)
    out_dir = Path(out_dir)
    fig_dir, tab_dir = out_dir / "figures", out_dir / "tables"
    tab_dir.mkdir(parents=True, exist_ok=True)
    tick = progress or (lambda *_, **__: None)

    points, front, qcol, qlabel = front_points(res, inp.quality)
    qual = inp.quality.per_policy if inp.quality is not None else None
    priv = privacy_table(res, inp.exposure)
    tick(1, "Pareto fronts")

    # --- provenance --------------------------------------------------------------------------
    first = res.row(0, named=True)
    configs = res.select([c for c in ("config", "rtt_s", "up_Bps", "down_Bps", "cost_source") if c in res.columns]) \
        .unique(maintain_order=True)
    prov = {
        "results": inp.results_path, "trace": first.get("trace"), "trace_path": inp.trace_path,
        "synthetic": bool(first.get("synthetic")) if "synthetic" in res.columns else None,
        "simulated_with": sorted(set(res["tool_version"].to_list())) if "tool_version" in res.columns else None,
        "report_tool_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "policies": res["policy"].n_unique(), "configurations": configs.to_dicts(),
        "drafter": (inp.trace_manifest or {}).get("drafter", {}).get("name"),
        "verifier": (inp.trace_manifest or {}).get("verifier", {}).get("name"),
        "tokenizer": getattr(inp.quality, "tokenizer", None),
    }
    prov_line = (f"trace <b>{html.escape(str(prov['trace']))}</b>"
                 + (f" ({html.escape(inp.trace_path)})" if inp.trace_path else "")
                 + f"; results {html.escape(inp.results_path)}; simulated by sectrace "
                 + html.escape(", ".join(prov["simulated_with"] or ["?"]))
                 + f"; report by sectrace {__version__}")

    def conf_text(c):
        r = configs.filter(pl.col("config") == c).row(0, named=True)
        return (f"RTT {1000 * r['rtt_s']:g} ms, uplink {r['up_Bps'] * 8 / 1e6:g} Mbit/s, downlink "
                f"{r['down_Bps'] * 8 / 1e6:g} Mbit/s; costs: {r['cost_source']}")

    sections = []
    # --- Pareto fronts, one per configuration ---------------------------------------------------
    figs_html = []
    for c in front["config"].unique(maintain_order=True).to_list():
        sub = front.filter(pl.col("config") == c)
        png = figures.save(figures.pareto(sub, qlabel, f"Pareto fronts at {conf_text(c)}"), fig_dir, f"pareto_config{c}")
        figs_html.append(_img(png, f"Pareto fronts, configuration {c}")
                         + f'<p class="cap">Configuration {c}: {html.escape(conf_text(c))}. Coloured points are on the '
                           "4-D front (quality ↑, latency ↓, cloud tokens ↓, bytes up ↓); grey points are dominated. "
                           f"Files: figures/pareto_config{c}.png/.svg/.pdf. {prov_line}.</p>")
    front_cols = ["policy", "config", "rtt_s", "quality", "latency_s", "cloud_tokens", "bytes_up", "covered",
                  "utterances"]
    sections.append(("Pareto fronts: quality × latency × cloud cost × privacy",
                     f"<p>Quality axis: <b>{qlabel}</b>. Dominated policies stay listed, greyed.</p>"
                     + "".join(figs_html) + _table(front.sort("config", "latency_s"), "on_front", front_cols)))
    front.write_csv(tab_dir / "pareto.csv")
    tick(1, "tables 1-2 and latency CDFs")

    # --- Table 1 (quality) ---------------------------------------------------------------------
    t1 = table1(qual)
    t1.write_csv(tab_dir / "table1_quality.csv")
    q_notes = "".join(f"<li>{html.escape(n)}</li>" for n in (getattr(inp.quality, "notes", []) or []))
    if inp.quality is None:
        q_intro = ('<p class="warn">No reference metrics: give the trace (<code>--trace</code>) so captions can be '
                   "scored against its references. The Pareto quality axis falls back to similarity to the cloud-only "
                   "caption.</p>")
    else:
        q_intro = (f"<p>BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr-D from pycocoevalcap 1.2 scorers, tokenizer: "
                   f"{html.escape(inp.quality.tokenizer)}; corpus scores ×100 over covered utterances (n). "
                   f"Study rows are the study's published numbers, for orientation only (other data, real models).</p>"
                   f"<ul class='cap'>{q_notes}</ul>")
        full = inp.quality.per_policy
        full.write_csv(tab_dir / "quality_per_policy.csv")
        inp.quality.per_caption.write_parquet(tab_dir / "quality_per_caption.parquet")
    sections.append(("Table 1: caption quality", q_intro + _table(t1) + f'<p class="cap">{prov_line}.</p>'))

    # --- Table 2 (latency) and latency CDFs ----------------------------------------------------
    t2_html, cdf_html = [], []
    for c in points["config"].unique(maintain_order=True).to_list():
        t2 = table2(points, c, with_study=(c == points["config"][0]))
        t2.write_csv(tab_dir / f"table2_latency_config{c}.csv")
        t2_html.append(f"<h3>Configuration {c}</h3><p class='cap'>{html.escape(conf_text(c))}</p>" + _table(t2))
        on = set(front.filter((pl.col("config") == c) & pl.col("on_front"))["policy"].to_list())
        on |= {"edge-only", "cloud-only"}
        png = figures.save(figures.latency_cdf(res.filter(pl.col("config") == c), on,
                                               f"Latency per caption, configuration {c}"), fig_dir, f"latency_cdf_config{c}")
        cdf_html.append(_img(png, f"latency CDF configuration {c}")
                        + f"<p class='cap'>{html.escape(conf_text(c))}. Front policies and baselines in colour, the "
                          f"rest grey. {prov_line}.</p>")
    sections.append(("Table 2: latency (like the study's Table 2)",
                     "<p>TTFT = time to the first committed token; OET = total − TTFT; OTPS = (tokens − 1) / OET. "
                     "CPU/RAM/GPU columns of the study are measurements the simulator does not model.</p>"
                     + "".join(t2_html)))
    sections.append(("Latency distributions", "".join(cdf_html)))
    tick(1, "privacy")

    # --- overhead breakdown ----------------------------------------------------------------------
    if inp.breakdown is not None and inp.breakdown.height:
        png = figures.save(figures.breakdown(inp.breakdown, "Where the time goes (mean per caption)"), fig_dir,
                           "overhead_breakdown")
        inp.breakdown.write_csv(tab_dir / "overhead_breakdown.csv")
        sections.append(("Overhead breakdown", _img(png, "overhead breakdown")
                         + f"<p class='cap'>{html.escape(inp.breakdown_note)} {prov_line}.</p>" + _table(inp.breakdown)))
    else:
        sections.append(("Overhead breakdown", f"<p class='warn'>{html.escape(inp.breakdown_note or 'not available')}</p>"))

    # --- break-even maps ----------------------------------------------------------------------------
    if inp.break_even is not None and inp.break_even[2]:
        rtts, speeds, ratios, rtt0 = inp.break_even
        png = figures.save(figures.break_even(rtts, speeds, ratios, rtt0, "Break-even against edge-only"), fig_dir,
                           "break_even")
        sections.append(("Break-even maps", _img(png, "break-even maps")
                         + f"<p class='cap'>{html.escape(inp.break_even_note)} The dot marks configuration 0. "
                           f"{prov_line}.</p>"))
    elif inp.break_even_note:
        sections.append(("Break-even maps", f"<p class='warn'>{html.escape(inp.break_even_note)}</p>"))

    # --- simulator vs live ------------------------------------------------------------------------
    if inp.validation is not None and inp.validation.height:
        f = inp.validation_facts or {}
        png = figures.save(figures.validation(inp.validation, "Simulated vs measured latency (live runs)"), fig_dir,
                           "validation")
        inp.validation_summary.write_csv(tab_dir / "validation.csv")
        med = f.get("median_ape_latency")
        tgt = f.get("target_median_ape_latency", 0.05)
        verdict = ("" if med is None else f"Median absolute error on total latency: {100 * med:.2f}% "
                   f"({'meets' if med <= tgt else 'misses'} the {100 * tgt:.0f}% target); TTFT "
                   f"{100 * (f.get('median_ape_ttft') or float('nan')):.1f}%. ")
        if f.get("noise_median_ad") is not None:
            verdict += (f"Identical edge-only runs differed from their mean by {100 * f['noise_median_ad']:.1f}% "
                        f"(median; at most {100 * f['noise_max_ad']:.1f}%), this machine's own noise. ")
        sections.append(("Simulator vs live runs",
                         f"<p>{html.escape(verdict)}Live captions equal to the replay: {f.get('captions_match')}/"
                         f"{f.get('runs')} (mismatches are not timed). Shaped path: {html.escape(str(f.get('shaper')))}"
                         f"; edge cores {f.get('edge_cpus')}, service cores {f.get('cloud_cpus')}; models "
                         f"{html.escape(str(f.get('drafter')))} / {html.escape(str(f.get('verifier')))}.</p>"
                         + _img(png, "simulated vs measured latency") + _table(inp.validation_summary)))

    # --- privacy ----------------------------------------------------------------------------------
    priv.write_csv(tab_dir / "privacy.csv")
    side = modes_side_by_side(priv)
    side.write_csv(tab_dir / "privacy_modes.csv")
    png = figures.save(figures.privacy_bars(priv, "What the cloud learns, per policy"), fig_dir, "privacy")
    priv_cols = ["policy", "privacy", "utterances", "contact_share", "cloud_calls", "cloud_seen_tokens",
                 "caption_share_seen", "emotion_words_exposed", "bytes_up", "audio_bytes_up"]
    exp_note = ("Caption tokens and emotion words seen are exact: each policy replayed through the protocol on the "
                "trace's trie." if inp.exposure is not None else
                "Caption tokens and emotion words seen need the trace (--trace); shown as –.")
    sections.append(("Privacy accounting",
                     "<p>token-only = the proposal (only token ids leave the device, the verifier never hears the audio); "
                     "features = the study (audio features uploaded with the first escalation, or every one if the cloud "
                     f"is stateless); raw = cloud-only. {exp_note}</p>"
                     + _img(png, "privacy") + _table(priv, cols=[c for c in priv_cols if c in priv.columns])
                     + "<h3>The proposal and the study side by side</h3>" + _table(side)
                     + f"<p class='cap'>{prov_line}.</p>"))
    tick(1, "breakdown, break-even and HTML")

    notes = "".join(f"<li>{html.escape(n)}</li>" for n in inp.notes)
    synth = ('<p class="warn"><b>Synthetic trace</b>: these numbers illustrate the method; they are not measurements of '
             "real models.</p>") if prov["synthetic"] else ""
    body = "".join(f"<h2>{html.escape(t)}</h2>{h}" for t, h in sections)
    prov_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(v, default=str))}</td></tr>"
                        for k, v in prov.items())
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>sectrace report: {html.escape(str(prov['trace']))}</title><style>{CSS}</style></head><body>
<h1>sectrace report: {html.escape(str(prov['trace']))}</h1>
{synth}<div class="prov">{prov_line}. {res['policy'].n_unique()} policies × {configs.height} configuration(s),
{res['utt_id'].n_unique()} utterances.{f'<ul>{notes}</ul>' if notes else ''}</div>
{body}
<h2>Provenance</h2><table>{prov_rows}</table>
<script type="application/json" id="provenance">{html.escape(json.dumps(prov, default=str))}</script>
</body></html>"""
    path = out_dir / "report.html"
    path.write_text(doc, encoding="utf-8")
    (out_dir / "provenance.json").write_text(json.dumps(prov, indent=2, default=str), encoding="utf-8")
    return path
