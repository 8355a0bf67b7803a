"""`sectrace simulate`: replay a trace under policies and price the runs on networks and devices."""

from __future__ import annotations

import math
from pathlib import Path

import click

from ..errors import UserError
from ..fsio import check_output, write_table
from ._common import (
    PRIVACY_CHOICES,
    adaptive_threshold,
    block_size,
    command_line,
    load_trace_or_sample,
    progress_bar,
    refuse_several,
    split_list,
    step,
    to_json,
    trace_option,
    verbosity_options,
)


def _one_speed(values):
    """--edge-tps here overrides the cost model with one speed; a list belongs to `breakeven`, which maps them."""
    if not values:
        return None
    text = refuse_several(split_list(values, "edge speed", str), "--edge-tps",
                          "it overrides the cost model; map several speeds with `sectrace breakeven --edge-tps 1,2,4`")
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--edge-tps {text!r} is not a number of tokens/s; e.g. --edge-tps 4") from None


@click.command()
@trace_option()
@click.option("--k", "ks", multiple=True, default=["5"], show_default=True,
              help="Block size: drafted tokens per gate decision. Lists sweep: --k 3,5,8.")
@click.option("--gate", "gates", multiple=True, default=["entropy:2.5"], show_default=True,
              help="Gate deciding which blocks go to the cloud; repeat to compare. Known: "
                   "always, never, entropy:T, entropy-mean:T, margin:T, logprob:T, random:P, stability:T, "
                   "audio:T, content:RULES, oracle, learned:FILE:P, any(G,...), all(G,...); "
                   "see `sectrace gates list`.")
@click.option("--accept", "accept", default="rank:20", show_default=True,
              help="Acceptance rule: top1 (lossless), rank:R (the study: rank:20) or prob:P.")
@click.option("--bonus/--no-bonus", default=True, show_default=True,
              help="When the verifier accepts a whole block, take its next top-1 token for free.")
@click.option("--privacy", type=click.Choice(PRIVACY_CHOICES), default="features",
              show_default=True, help="What leaves the device: token ids only (blind verifier), plus audio "
                                      "features (the study's setup), or raw audio.")
@click.option("--cloud-cache", type=click.Choice(["stateful", "stateless"]), default="stateful",
              show_default=True, help="Whether the cloud keeps its KV cache between calls of one caption.")
@click.option("--adaptive", "adaptives", multiple=True, default=["off"], show_default=True,
              help="Adaptive k: stop drafting a block early after a token the drafter gives less than this "
                   "probability (k is then the longest block), e.g. --adaptive 0.3; lists sweep: --adaptive off,0.2,0.4.")
@click.option("--max-new-tokens", default=None, type=int, help="Caption length cap (default: the trace's).")
@click.option("--network", "network_name", default=None,
              help="Network preset (lan, wifi, 4g, 5g, leo-satellite, satellite; sources in docs/simulator.md); "
                   "flags below override its fields.")
@click.option("--rtt", "rtts", multiple=True, default=None,
              help="Round-trip time edge ⇄ cloud, e.g. 50ms or 0.05s; lists sweep: --rtt 20ms,100ms. [default: 50ms]")
@click.option("--uplink", default=None, help="Edge → cloud bandwidth. [default: 20Mbit/s]")
@click.option("--downlink", default=None, help="Cloud → edge bandwidth. [default: 50Mbit/s]")
@click.option("--overhead", default=None, help="Framing bytes per message. [default: 100B]")
@click.option("--jitter", default=None, help="Extra one-way delay per message, a scipy.stats distribution in "
                                             "seconds, e.g. 'expon(scale=0.002)'; priced at its mean here.")
@click.option("--loss", default=None, type=float, help="Message loss probability, e.g. 0.01 (priced at its mean).")
@click.option("--rto", default=None, help="Retransmission timeout per lost message. [default: 200ms]")
@click.option("--edge-device", default=None, help="Edge device preset: study-cpu-2core, study-cpu-2core-x4.")
@click.option("--cloud-device", default=None, help="Cloud device preset: study-a100, h100-sxm, l4.")
@click.option("--costs", "cost_mode", type=click.Choice(["fit", "study"]), default="fit", show_default=True,
              help="Model call costs: fitted to the trace's timings, or the study's devices "
                   "(the presets study-cpu-2core and study-a100).")
@click.option("--edge-tps", multiple=True,
              help="Override: edge decode speed in tokens/s (one; `breakeven` maps several).")
@click.option("--edge-prefill", help="Override: edge prefill (audio + prompt) time, e.g. 7.3s.")
@click.option("--cloud-tps", type=float, help="Override: cloud decode speed in tokens/s.")
@click.option("--cloud-prefill", help="Override: cloud prefill time, e.g. 350ms.")
@click.option("--cloud-verify", help="Override: cloud time per verify call (any block size), e.g. 45ms.")
@click.option("--gate-cost", default="0ms", show_default=True, help="Edge time per gate decision.")
@click.option("--edge-speedup", default=1.0, show_default=True, help="Scale the edge: 4 = four times faster.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Write per-utterance results (.parquet, or .csv without the token lists' structure).")
@click.option("--summary-out", type=click.Path(path_type=Path),
              help="Write the summary (one row per policy and network, every metric with its 95 % interval) "
                   "as a table (.parquet or .csv).")
@click.option("--force", is_flag=True, help="Replace --out and --summary-out if they exist.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
@click.option("--breakdown", is_flag=True, help="Also print where the time goes (mean seconds per part) and the "
                                                "round-trip time an overlapping edge would hide.")
@verbosity_options
def simulate(trace_path, ks, gates, accept, bonus, privacy, cloud_cache, adaptives, max_new_tokens, network_name, rtts,
             uplink, downlink, overhead, jitter, loss, rto, edge_device, cloud_device, cost_mode, edge_tps,
             edge_prefill, cloud_tps, cloud_prefill, cloud_verify, gate_cost,
             edge_speedup, out, summary_out, force, as_json, breakdown):
    """Replay a trace under edge-only, cloud-only and hybrid policies and compare them.

    Without --trace the bundled sample trace is used. Each hybrid policy is every
    combination of --k and --gate; each network is one --rtt. Replay is exact: an
    utterance whose run leaves the explored trie is a coverage miss, counted and left out
    of the means, never guessed.

    \b
    Examples:
      sectrace simulate --rtt 50ms
      sectrace simulate --gate entropy:2.5 --gate margin:0.3 --k 3,5 --rtt 20ms,100ms
      sectrace simulate --trace my-trace --accept top1 --gate always --privacy token-only --out r.parquet
    """
    from dataclasses import replace

    from ..gates import parse_gate, split_top
    from ..protocol import Accept, Policy
    from ..simulate import Network, Replayer, baselines, fit_summary, fit_warning, profiles, summarise
    from ..simulate import simulate as run_sim
    from ..simulate.metrics import BOOTSTRAP, DEFINITIONS
    from ..simulate.profiles import base_cost
    from ..simulate.results import coverage_note
    from ..units import parse_duration, parse_rate, parse_size

    if out:
        check_output(out, force)
    if summary_out:
        check_output(summary_out, force, flag="--summary-out")
    with step("loading the trace"):
        tr = load_trace_or_sample(trace_path)
    max_new = max_new_tokens or int(tr.manifest["decoding"].get("max_new_tokens", 64))
    acc = Accept.parse(accept)
    k_list = split_list(ks, "block size", block_size)
    gate_specs = [s for g in gates for s in split_top(str(g))]
    if not gate_specs:
        raise UserError("give at least one gate")
    gate_objs = [(spec, parse_gate(spec, tr)) for spec in gate_specs]
    policies = list(baselines(max_new))
    adaptive_list = split_list(adaptives, "adaptive threshold", adaptive_threshold)
    for k in k_list:
        for spec, g in gate_objs:
            for adaptive in adaptive_list:
                policies.append(Policy(k=k, gate=g, gate_spec=spec.lower(), accept=acc, bonus=bonus,
                                       privacy=privacy, cloud_cache=cloud_cache, max_new_tokens=max_new,
                                       adaptive=adaptive))
    cost = base_cost(tr, cost_mode, edge_device, cloud_device)
    edge_tps = _one_speed(edge_tps)
    overridden = {phase for phase, given in (("edge_decode", edge_tps), ("edge_prefill", edge_prefill),
                                             ("cloud_decode", cloud_tps), ("cloud_prefill", cloud_prefill),
                                             ("cloud_verify", cloud_verify)) if given}
    if edge_device:
        overridden |= {"edge_prefill", "edge_decode"}
    if cloud_device:
        overridden |= {"cloud_prefill", "cloud_verify", "cloud_decode"}
    over = {}
    if edge_tps:
        over.update(edge_step_a=1.0 / edge_tps, edge_step_c=0.0)
    def seconds(text, flag):
        return parse_duration(text, flag, require_unit=True)

    if edge_prefill:
        over.update(edge_prefill_a=seconds(edge_prefill, "--edge-prefill"), edge_prefill_b=0.0)
    if cloud_tps:
        over.update(cloud_step_a=1.0 / cloud_tps, cloud_step_c=0.0)
    if cloud_prefill:
        over.update(cloud_prefill_a=seconds(cloud_prefill, "--cloud-prefill"), cloud_prefill_b=0.0)
    if cloud_verify:  # one time per call, whatever its size: any measured verify table goes
        cost = cost.with_linear_verify(seconds(cloud_verify, "--cloud-verify"), 0.0, 0.0)
        over["source"] = cost.source
    over["gate_s"] = seconds(gate_cost, "--gate-cost")
    if any(k != "gate_s" for k in over):
        over["source"] = cost.source + " with overrides from flags"
    cost = replace(cost, **over)
    if edge_speedup <= 0:
        raise UserError("--edge-speedup must be positive")
    if edge_speedup != 1.0:
        cost = replace(cost.scaled(edge_speedup=edge_speedup), source=cost.source + f", edge ×{edge_speedup:g}")
    base = profiles.network_preset(network_name) if network_name else Network()
    net_over = {}
    if uplink:
        net_over["up_Bps"] = parse_rate(uplink, "--uplink")
    if downlink:
        net_over["down_Bps"] = parse_rate(downlink, "--downlink")
    if overhead:
        net_over["overhead_bytes"] = parse_size(overhead, "--overhead")
    if jitter:
        net_over["jitter"] = jitter
    if loss is not None:
        net_over["loss"] = loss
    if rto:
        net_over["rto_s"] = seconds(rto, "--rto")
    base = replace(base, **net_over)
    rtt_list = [seconds(r, "--rtt") for r in split_list(rtts, "RTT", str)] if rtts else [base.rtt_s]
    configs = [(cost, replace(base, rtt_s=r)) for r in rtt_list]
    rp = Replayer(tr)
    with progress_bar(total=len(policies), desc="replaying", unit="policy", leave=False) as bar, \
            step(f"replaying {len(policies)} policies × {len(configs)} networks"):
        results = run_sim(tr, policies, configs, replayer=rp, progress=bar.update, command=command_line())
    with step("summarising (bootstrap intervals)"):
        summary = summarise(results)
    if out:
        with step(f"writing {out}"):
            write_table(results, out)
    if summary_out:
        prov = results.select(PROVENANCE).head(1)
        write_table(prov.join(summary, how="cross").select(*summary.columns, *PROVENANCE), summary_out)
    warn = fit_warning(cost, overridden)
    note = coverage_note(summary, tr.path, tr.synthetic)
    if warn:
        click.echo(f"warning: {warn}", err=True)
    if as_json:
        click.echo(to_json({
            "provenance": results.select(PROVENANCE).row(0, named=True),
            "costs": dict(cost.__dict__), "cost_warning": warn, "coverage": note,
            "bootstrap": BOOTSTRAP, "definitions": DEFINITIONS, "summary": summary.to_dicts()}))
        return
    _print_table(tr, summary, cost, configs, fit_summary(cost, overridden))
    if note:
        click.echo(note)
    if breakdown:
        _print_breakdown(results)
    if out:
        click.echo(f"\nper-utterance results: {out} ({results.height} rows; columns in docs/results-format.md)")


#: Provenance columns copied into the JSON and the --summary-out table.
PROVENANCE = ("trace", "trace_path", "trace_sha256", "synthetic", "tool_version", "git_commit", "packages", "command")


def _print_breakdown(results):
    import polars as pl

    parts = [c for c in results.columns if c.startswith("t_")]
    agg = (results.filter(pl.col("covered")).group_by(["config", "rtt_s", "policy"], maintain_order=True)
           .agg([pl.col(c).mean() for c in parts + ["latency_s", "overlap_hidden_s"]]))
    click.echo("\nwhere the time goes (mean seconds per caption; parts add up to the latency)")
    for rtt, grp in agg.group_by("rtt_s", maintain_order=True):
        click.echo(f"RTT {rtt[0] * 1000:g} ms")
        short = {"edge_prefill": "prefill", "edge_drafting": "drafting", "wasted_drafts": "wasted",
                 "cloud_prefill": "c.prefill", "cloud_verify": "verify", "cloud_decode": "c.decode",
                 "queueing": "queue"}
        click.echo(f"{'policy':<44}" + "".join(f"{short.get(c[2:-2], c[2:-2]):>10}" for c in parts)
                   + f"{'latency':>10}{'overlap':>10}")
        for r in grp.iter_rows(named=True):
            click.echo(f"{r['policy'][:43]:<44}" + "".join(f"{r[c]:>10.3f}" for c in parts)
                       + f"{r['latency_s']:>10.3f}{-r['overlap_hidden_s'] or 0.0:>10.3f}")
    click.echo("overlap: time hidden if the edge drafts ahead during verification (needs --no-bonus to pay off)")


def _pm(x, lo, hi):
    """A mean and the half-width of its 95 % interval in the mean's unit: ``6.34 s ±0.83``, ``473 ms ±40``."""
    from ..units import fmt_seconds

    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return fmt_seconds(x)
    half = (hi - lo) / 2
    return f"{fmt_seconds(x)} ±" + (f"{half:.2f}" if x >= 1.0 else f"{half * 1000:.0f}")


def _fmt(x, kind):
    from ..units import fmt_bytes, fmt_seconds

    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if kind == "s":
        return fmt_seconds(x)
    if kind == "B":
        return fmt_bytes(x)
    if kind == "%":
        return f"{100 * x:.0f}%"
    if kind == "f1":
        return f"{x:.1f}"
    return f"{x:.2f}"


def _print_table(tr, summary, cost, configs, fit_line=None):
    echo = click.echo
    label = "SYNTHETIC trace: numbers illustrate the method, not real models" if tr.synthetic else "measured trace"
    echo(f"trace: {tr.path}  ({tr.utterances.height} utterances; {label})")
    ctx = int(tr.utterances["edge_prompt_tokens"].median())
    cctx = int(tr.utterances["cloud_prompt_tokens"].median())
    echo(f"costs: {cost.source}; edge {1 / (cost.edge_step_a + cost.edge_step_c * ctx):.2f} tok/s, "
         f"cloud {1 / (cost.cloud_step_a + cost.cloud_step_c * cctx):.2f} tok/s (at a median prompt)")
    if fit_line:
        echo(f"  {fit_line}")
    net = configs[0][1]
    echo(f"network: uplink {net.up_Bps * 8 / 1e6:g} Mbit/s, downlink {net.down_Bps * 8 / 1e6:g} Mbit/s, "
         f"{net.overhead_bytes} B/message")
    cols = [("policy", None), ("covered", None), ("= cloud", "%"), ("similar", "%"), ("calls", "f1"),
            ("cloud tok", "f1"), ("up", "B"), ("audio up", "B"), ("TTFT", "s"), ("latency", "s"), ("p90", "s"),
            ("tok/s", "")]
    any_miss = False
    for rtt in summary["rtt_s"].unique(maintain_order=True).to_list():
        rows = summary.filter(summary["rtt_s"] == rtt).to_dicts()
        table = []
        for r in rows:
            miss = r["covered"] < r["utterances"]
            any_miss |= miss
            table.append([r["policy"], f"{r['covered']}/{r['utterances']}" + ("*" if miss else ""),
                          *[_fmt(r[key], kind) for key, kind in (
                              ("exact_match_cloud", "%"), ("similarity_cloud", "%"), ("cloud_calls", "f1"),
                              ("cloud_tokens", "f1"), ("bytes_up", "B"), ("audio_bytes_up", "B"), ("ttft_s", "s"))],
                          _pm(r.get("latency_s"), r.get("latency_s_lo"), r.get("latency_s_hi")),
                          *[_fmt(r.get(key), kind) for key, kind in (("latency_p90_s", "s"), ("tokens_per_s", ""))]])
        widths = [max(len(c[0]), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
        echo(f"\nRTT {rtt * 1000:g} ms")
        echo("  ".join(c[0].ljust(w) if i == 0 else c[0].rjust(w) for i, (c, w) in enumerate(zip(cols, widths))))
        for t in table:
            echo("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(t, widths))))
    echo("\n= cloud: captions identical to cloud-only; similar: 1 − token edit distance to cloud-only; "
         "calls/cloud tok/up: per caption")
    echo("latency: mean ± half the 95 % bootstrap interval over utterances (2,000 resamples; --json gives both "
         "ends and every metric's)")
    if any_miss:
        echo("* some utterances left the explored trie (coverage misses): they are excluded from that row's "
             "means, never guessed.")
