"""The `sectrace` command: thin click wrappers, parse → call → print.

Every user-facing failure is a :class:`UserError`: one sentence on stderr, exit code 2.
"""

from __future__ import annotations

import json
import math
import sys
from importlib import resources
from pathlib import Path

import click

from . import __version__
from .atomic import write_parquet_atomic
from .errors import UserError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


def sample_trace_path() -> Path:
    return Path(str(resources.files("sectrace") / "data" / "sample-trace"))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sectrace")
def main():
    """Edge–cloud speculative decoding for speech emotion captioning, studied from traces.

    A trace records what a drafter and a verifier did at every decoding state visited
    (a prefix trie). `simulate` replays it exactly under other gates, block sizes,
    acceptance rules, networks and devices, and prices each run.

    \b
    Start here:
      sectrace simulate --rtt 50ms                 # the bundled sample trace
      sectrace simulate --gate entropy:2.5 --gate margin:0.3 --k 3,5 --rtt 20ms,100ms
      sectrace trace synth my-trace --alpha 0.8    # a trace from a stated model
    """


# --- trace ---------------------------------------------------------------------------
@main.group(cls=_Group)
def trace():
    """Make, inspect and check traces (see docs/trace-format.md)."""


@trace.command("synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--utterances", "-n", default=40, show_default=True, help="How many utterances.")
@click.option("--alpha", default=0.7, show_default=True,
              help="P(the audio verifier's top-1 equals the drafter's token), independently per state.")
@click.option("--alpha-blind", default=0.55, show_default=True, help="The same for the blind (token-only) verifier.")
@click.option("--coupling", default=0.6, show_default=True,
              help="How much the drafter's confidence predicts agreement: 0 = pure α-model, 1 = perfectly.")
@click.option("--mean-length", default=24.0, show_default=True, help="Mean caption length in tokens.")
@click.option("--max-new-tokens", default=64, show_default=True, help="Longest caption explored.")
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def trace_synth(out, utterances, alpha, alpha_blind, coupling, mean_length, max_new_tokens, seed, force):
    """Write a synthetic trace to OUT from a stated statistical model.

    At every decoding state the verifier keeps the drafter's token with probability
    ALPHA, independently: the model under which Leviathan et al. derive the expected
    tokens per verification call, (1 − α^(k+1)) / (1 − α). The default exploration
    (edge-only, cloud greedy, always-escalate with rank ≤ R, built-in gates at a few
    thresholds, for k in 1, 3, 5, 8) is recorded in the trie. The trace says it is
    synthetic everywhere it shows.
    """
    from tqdm import tqdm

    from .gates import default_exploration
    from .trace import write_trace
    from .trace.synth import AlphaModel, synth_trace

    if utterances < 1:
        raise UserError("--utterances must be at least 1")
    if out.exists() and not force:
        raise UserError(f"{out} already exists; choose another path or pass --force to replace it")
    model = AlphaModel(alpha=alpha, alpha_blind=alpha_blind, coupling=coupling, mean_length=mean_length, seed=seed)
    policies = default_exploration(max_new_tokens)
    with tqdm(total=utterances, desc="exploring", unit="utt", disable=None) as bar:
        manifest, utts, nodes, timings, vocab = synth_trace(model, utterances, policies, progress=bar.update)
    write_trace(out, manifest, utts, nodes, timings, vocab, overwrite=force)
    click.echo(f"wrote synthetic trace {out}: {utterances} utterances, {nodes.height} trie nodes, "
               f"{len(policies)} exploration policies")


@trace.command("info")
@click.argument("path", required=False, type=click.Path(path_type=Path))
def trace_info(path):
    """Validate a trace and describe it (the bundled sample if PATH is omitted)."""
    from .trace import load_trace

    tr = load_trace(path or sample_trace_path())
    m = tr.manifest
    per_utt = tr.nodes.group_by("utt_id").len()["len"]
    click.echo(f"trace       {tr.path}")
    click.echo(f"synthetic   {'YES: numbers illustrate the method, not real models' if tr.synthetic else 'no'}")
    click.echo(f"schema      v{m['schema_version']}, written by sectrace {m['tool_version']} on {m['created']}")
    click.echo(f"drafter     {m['drafter']['name']} ({m['drafter']['revision']}, vocab {m['drafter']['vocab_size']})")
    click.echo(f"verifier    {m['verifier']['name']} ({m['verifier']['revision']}, vocab {m['verifier']['vocab_size']}), "
               f"modes {', '.join(tr.modes)}")
    click.echo(f"dataset     {m['dataset'].get('name')}: {tr.utterances.height} utterances")
    click.echo(f"trie        {tr.nodes.height} nodes ({per_utt.min()}–{per_utt.max()} per utterance)")
    click.echo(f"timings     {tr.timings.height} measured calls")
    click.echo("valid       yes")


# --- collect (issue 3) ---------------------------------------------------------------
from .collect.commands import collect_cmd as _collect_cmd, merge_cmd as _merge_cmd  # noqa: E402

main.add_command(_collect_cmd, "collect")
trace.add_command(_merge_cmd, "merge")


# --- simulate ------------------------------------------------------------------------
def _split(values, what, parse):
    out = []
    for v in values:
        for part in str(v).split(","):
            if part.strip():
                out.append(parse(part.strip()))
    if not out:
        raise UserError(f"give at least one {what}")
    return out


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise UserError(f"block size {text!r} is not a whole number; e.g. --k 5 or --k 3,5,8") from None


def _float_or_none(text):
    return None if text in (None, "", "off", "none") else float(text)


def _adaptive(text):
    try:
        return _float_or_none(text.lower())
    except ValueError:
        raise UserError(f"adaptive threshold {text!r} is not a probability; e.g. --adaptive 0.3 or off") from None


@main.command()
@click.argument("trace_path", metavar="[TRACE]", required=False, type=click.Path(path_type=Path))
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
@click.option("--privacy", type=click.Choice(["token-only", "features", "raw"]), default="features",
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
                   "(edge 2.10 tok/s, cloud 24.16 tok/s).")
@click.option("--edge-tps", type=float, help="Override: edge decode speed in tokens/s.")
@click.option("--edge-prefill", help="Override: edge prefill (audio + prompt) time, e.g. 7.3s.")
@click.option("--cloud-tps", type=float, help="Override: cloud decode speed in tokens/s.")
@click.option("--cloud-prefill", help="Override: cloud prefill time, e.g. 350ms.")
@click.option("--cloud-verify", help="Override: cloud time per verify call (any block size), e.g. 45ms.")
@click.option("--gate-cost", default="0ms", show_default=True, help="Edge time per gate decision.")
@click.option("--edge-speedup", default=1.0, show_default=True, help="Scale the edge: 4 = four times faster.")
@click.option("--out", type=click.Path(path_type=Path), help="Write per-utterance results as Parquet.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
@click.option("--breakdown", is_flag=True, help="Also print where the time goes (mean seconds per part) and the "
                                                "round-trip time an overlapping edge would hide.")
def simulate(trace_path, ks, gates, accept, bonus, privacy, cloud_cache, adaptives, max_new_tokens, network_name, rtts,
             uplink, downlink, overhead, jitter, loss, rto, edge_device, cloud_device, cost_mode, edge_tps,
             edge_prefill, cloud_tps, cloud_prefill, cloud_verify, gate_cost,
             edge_speedup, out, as_json, breakdown):
    """Replay TRACE under edge-only, cloud-only and hybrid policies and compare them.

    Without TRACE the bundled sample trace is used. Each hybrid policy is every
    combination of --k and --gate; each network is one --rtt. Replay is exact: an
    utterance whose run leaves the explored trie is a coverage miss, counted and left out
    of the means, never guessed.

    \b
    Examples:
      sectrace simulate --rtt 50ms
      sectrace simulate --gate entropy:2.5 --gate margin:0.3 --k 3,5 --rtt 20ms,100ms
      sectrace simulate my-trace --accept top1 --gate always --privacy token-only --out r.parquet
    """
    from dataclasses import replace

    from tqdm import tqdm

    from .gates import parse_gate, split_top
    from .protocol import Accept, Policy
    from .simulate import Network, Replayer, baselines, profiles, simulate as run_sim, summarise
    from .trace import load_trace
    from .units import parse_duration, parse_rate, parse_size

    tr = load_trace(trace_path or sample_trace_path())
    max_new = max_new_tokens or int(tr.manifest["decoding"].get("max_new_tokens", 64))
    acc = Accept.parse(accept)
    k_list = _split(ks, "block size", _int)
    gate_specs = [s for g in gates for s in split_top(str(g))]
    if not gate_specs:
        raise UserError("give at least one gate")
    gate_objs = [(spec, parse_gate(spec, tr)) for spec in gate_specs]
    policies = list(baselines(max_new))
    adaptive_list = _split(adaptives, "adaptive threshold", _adaptive)
    for k in k_list:
        for spec, g in gate_objs:
            for adaptive in adaptive_list:
                policies.append(Policy(k=k, gate=g, gate_spec=spec.lower(), accept=acc, bonus=bonus,
                                       privacy=privacy, cloud_cache=cloud_cache, max_new_tokens=max_new,
                                       adaptive=adaptive))
    cost = _base_cost(tr, cost_mode, edge_device, cloud_device)
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
    if cloud_verify:
        over.update(verify_a=seconds(cloud_verify, "--cloud-verify"), verify_b=0.0, verify_c=0.0)
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
    rtt_list = [seconds(r, "--rtt") for r in _split(rtts, "RTT", str)] if rtts else [base.rtt_s]
    configs = [(cost, replace(base, rtt_s=r)) for r in rtt_list]
    rp = Replayer(tr)
    with tqdm(total=len(policies), desc="replaying", unit="policy", disable=None, leave=False) as bar:
        results = run_sim(tr, policies, configs, replayer=rp, progress=bar.update)
    summary = summarise(results)
    if out:
        write_parquet_atomic(results, out)
    if as_json:
        click.echo(json.dumps({
            "trace": str(tr.path), "synthetic": tr.synthetic, "tool_version": __version__,
            "costs": {k: v for k, v in cost.__dict__.items()}, "summary": summary.to_dicts()}, indent=2,
            default=str))
        return
    _print_table(tr, summary, cost, configs)
    if breakdown:
        _print_breakdown(results)
    if out:
        click.echo(f"\nper-utterance results: {out} ({results.height} rows; columns in docs/results-format.md)")


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


def _fmt(x, kind):
    from .units import fmt_bytes, fmt_seconds

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


def _print_table(tr, summary, cost, configs):
    echo = click.echo
    label = "SYNTHETIC trace: numbers illustrate the method, not real models" if tr.synthetic else "measured trace"
    echo(f"trace: {tr.path}  ({tr.utterances.height} utterances; {label})")
    ctx = int(tr.utterances["edge_prompt_tokens"].median())
    cctx = int(tr.utterances["cloud_prompt_tokens"].median())
    echo(f"costs: {cost.source}; edge {1 / (cost.edge_step_a + cost.edge_step_c * ctx):.2f} tok/s, "
         f"cloud {1 / (cost.cloud_step_a + cost.cloud_step_c * cctx):.2f} tok/s (at a median prompt)")
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
                              ("cloud_tokens", "f1"), ("bytes_up", "B"), ("audio_bytes_up", "B"), ("ttft_s", "s"),
                              ("latency_s", "s"), ("latency_p90_s", "s"), ("tokens_per_s", ""))]])
        widths = [max(len(c[0]), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
        echo(f"\nRTT {rtt * 1000:g} ms")
        echo("  ".join(c[0].ljust(w) if i == 0 else c[0].rjust(w) for i, (c, w) in enumerate(zip(cols, widths))))
        for t in table:
            echo("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(t, widths))))
    echo("\n= cloud: captions identical to cloud-only; similar: 1 − token edit distance to cloud-only; "
         "calls/cloud tok/up: per caption")
    if any_miss:
        echo("* some utterances left the explored trie (coverage misses): they are excluded from that row's "
             "means, never guessed. Explore more with `sectrace trace synth` or collect the missing states.")


# --- report, timeline (reports stage; wiring in cli_report.py) ----------------------------
from .cli_report import report as _report, timeline as _timeline  # noqa: E402

main.add_command(_report)
main.add_command(_timeline)

# --- stage command groups (one line each) ---------------------------------------------------------------
from .gates.commands import gates as _gates  # noqa: E402

main.add_command(_gates)


# --- demo (issue 4): speech data, on-device front end, model weights -------------------
from .demo.commands import data as _data, weights as _weights  # noqa: E402

main.add_command(_data)
main.add_command(_weights)

# --- live runs (issue 8): the verifier service and validation against the simulator -----
from .live.commands import serve as _serve, validate as _validate  # noqa: E402

main.add_command(_serve)
main.add_command(_validate)


# --- sweep, breakeven, fleet (the simulator at scale) -----------------------------------------
def _base_cost(tr, cost_mode, edge_device=None, cloud_device=None):
    from .simulate import CostModel, fit_costs, profiles

    cost = fit_costs(tr.timings) if cost_mode == "fit" else CostModel()
    if edge_device:
        cost = profiles.edge_device(edge_device).apply(cost)
    if cloud_device:
        cost = profiles.cloud_device(cloud_device).apply(cost)
    return cost


def _one_policy(k, gate, accept, bonus, privacy, cloud_cache, max_new):
    from .gates import parse_gate
    from .protocol import Accept, Policy

    return Policy(k=k, gate=parse_gate(gate), gate_spec=gate.lower(), accept=Accept.parse(accept), bonus=bonus,
                  privacy=privacy, cloud_cache=cloud_cache, max_new_tokens=max_new)


_policy_opts = [
    click.option("--k", default=5, show_default=True, help="Block size."),
    click.option("--gate", default="entropy:2.5", show_default=True, help="Gate (always, entropy:T, margin:T, ...)."),
    click.option("--accept", default="rank:20", show_default=True, help="Acceptance rule: top1, rank:R, prob:P."),
    click.option("--bonus/--no-bonus", default=True, show_default=True, help="Take the verifier's bonus token."),
    click.option("--privacy", type=click.Choice(["token-only", "features"]), default="features", show_default=True),
    click.option("--cloud-cache", type=click.Choice(["stateful", "stateless"]), default="stateful",
                 show_default=True),
    click.option("--costs", "cost_mode", type=click.Choice(["fit", "study"]), default="fit", show_default=True,
                 help="Costs fitted to the trace's timings, or the study's devices."),
    click.option("--edge-device", default=None, help="Edge device preset (see docs/simulator.md)."),
    click.option("--cloud-device", default=None, help="Cloud device preset (see docs/simulator.md)."),
]


def _with(opts):
    def deco(f):
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


@main.command()
@click.argument("grid", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Summary per (policy, config), Parquet.")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path),
              help="Trace (default: the grid's, or the sample).")
@click.option("--costs", "cost_mode", type=click.Choice(["fit", "study"]), default="fit", show_default=True,
              help="Base costs when the grid names no device: fitted to the trace, or the study's devices.")
@click.option("--jobs", default=1, show_default=True, help="Parallel worker processes (joblib), split by policy.")
def sweep(grid, out, trace_path, cost_mode, jobs):
    """Price the cartesian product of GRID (policies × networks × devices) in one pass per policy.

    \b
    Example grid (docs/simulator.md lists every key):
      [policy]  k = [1, 3, 5, 8]   gate = ["always", "entropy:2.5"]   accept = ["top1", "rank:20"]
      [network] preset = ["wifi", "4g"]   rtt = ["10ms", "50ms", "200ms"]
      [device]  edge = "study-cpu-2core"   edge_speedup = [1, 2, 4, 8]
    """
    import time

    from tqdm import tqdm

    from .simulate import Replayer
    from .simulate.sweep import load_grid, run_sweep, run_sweep_parallel, tomllib
    from .trace import load_trace

    try:
        doc_trace = tomllib.loads(grid.read_text()).get("trace")
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"cannot read grid {grid}: {exc}") from None
    if trace_path is None and doc_trace:
        trace_path = (grid.parent / doc_trace) if not Path(doc_trace).is_absolute() else Path(doc_trace)
    trace_path = trace_path or sample_trace_path()
    tr = load_trace(trace_path)
    max_new = int(tr.manifest["decoding"].get("max_new_tokens", 64))
    policies, ax, cost, _ = load_grid(grid, max_new)
    cost = cost or _base_cost(tr, cost_mode)
    t0 = time.perf_counter()
    n_utt = tr.utterances.height
    with tqdm(total=len(policies), desc="sweeping", unit="policy", disable=None, leave=False) as bar:
        if jobs == 1:
            df = run_sweep(Replayer(tr), policies, cost, ax, progress=bar.update)
        else:
            df = run_sweep_parallel(trace_path, policies, cost, ax, jobs, progress=bar.update)
    dt = time.perf_counter() - t0
    write_parquet_atomic(df, out)
    click.echo(f"{len(policies)} policies × {len(ax)} configurations = {df.height} rows → {out} "
               f"({len(policies) * len(ax) * n_utt / dt:,.0f} utterance-replays/s, {dt:.2f} s)")


@main.command()
@click.argument("trace_path", metavar="[TRACE]", required=False, type=click.Path(path_type=Path))
@_with(_policy_opts)
@click.option("--edge-tps", "tps", default="0.5,1,2,4,8,16,32,64", show_default=True,
              help="Edge decode speeds (tokens/s) to map.")
@click.option("--rtt", "rtts", default="1ms,10ms,20ms,50ms,100ms,200ms,600ms", show_default=True,
              help="Round-trip times to map.")
@click.option("--network", "network_name", default=None, help="Network preset for bandwidths, jitter, loss.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the map as Parquet.")
def breakeven(trace_path, k, gate, accept, bonus, privacy, cloud_cache, cost_mode, edge_device, cloud_device, tps,
              rtts, network_name, out):
    """Where, in the edge tok/s × RTT plane, the hybrid beats edge-only and cloud-only (mean latency).

    In the printed map: H = hybrid fastest, E = edge-only fastest, C = cloud-only fastest;
    lower case h: the hybrid beats edge-only but not cloud-only."""
    from .simulate import Network, Replayer, profiles
    from .simulate.sweep import breakeven as run_map
    from .trace import load_trace
    from .units import parse_duration

    tr = load_trace(trace_path or sample_trace_path())
    max_new = int(tr.manifest["decoding"].get("max_new_tokens", 64))
    pol = _one_policy(k, gate, accept, bonus, privacy, cloud_cache, max_new)
    cost = _base_cost(tr, cost_mode, edge_device, cloud_device)
    net = profiles.network_preset(network_name) if network_name else Network()
    tps_list = _split([tps], "edge speed", float)
    if min(tps_list) <= 0:
        raise UserError("--edge-tps values must be positive")
    rtt_list = [parse_duration(r, "--rtt", require_unit=True) for r in _split([rtts], "RTT", str)]
    m = run_map(Replayer(tr), pol, cost, net, tps_list, rtt_list)
    if out:
        write_parquet_atomic(m, out)
    click.echo(f"policy: {pol.label}   costs: {cost.source}")
    click.echo("edge tok/s \\ RTT " + " ".join(f"{r * 1000:>6.0f}ms" for r in rtt_list))
    for t in tps_list:
        row = m.filter(m["edge_tps"] == t)
        cells = []
        for r in row.iter_rows(named=True):
            best = min(("H", r["hybrid_s"]), ("E", r["edge_only_s"]), ("C", r["cloud_only_s"]), key=lambda x: x[1])[0]
            cells.append("h" if best == "C" and r["beats_edge"] else best)
        click.echo(f"{t:>16g} " + " ".join(f"{c:>8}" for c in cells))
    if out:
        click.echo(f"map: {out} ({m.height} rows)")


@main.command()
@click.argument("trace_path", metavar="[TRACE]", required=False, type=click.Path(path_type=Path))
@_with(_policy_opts)
@click.option("--devices", default=10, show_default=True, help="Edge devices sharing the cloud.")
@click.option("--servers", default=1, show_default=True, help="Cloud GPU servers.")
@click.option("--max-batch", default=8, show_default=True, help="Verifications a server runs as one batch.")
@click.option("--batch-window", default="0ms", show_default=True, help="How long a server waits to fill a batch.")
@click.option("--batch-slowdown", default=0.05, show_default=True, help="Extra time per extra request in a batch.")
@click.option("--arrival-rate", default=None, type=float,
              help="Utterances per second per device (Poisson); default: back to back.")
@click.option("--utterances-per-device", default=None, type=int, help="Default: the whole trace.")
@click.option("--network", "network_name", default=None, help="Network preset (jitter and loss are sampled).")
@click.option("--rtt", default=None, help="Override the network's RTT.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Per-utterance fleet results as Parquet.")
def fleet(trace_path, k, gate, accept, bonus, privacy, cloud_cache, cost_mode, edge_device, cloud_device, devices,
          servers, max_batch, batch_window, batch_slowdown, arrival_rate, utterances_per_device, network_name, rtt,
          seed, out):
    """Play one policy on a fleet (SimPy): devices share batching cloud servers; jitter and loss are sampled."""
    from dataclasses import replace

    from .simulate import Network, Replayer, profiles
    from .simulate.fleet import Fleet, fleet_summary, plans, simulate_fleet
    from .trace import load_trace
    from .units import parse_duration

    tr = load_trace(trace_path or sample_trace_path())
    max_new = int(tr.manifest["decoding"].get("max_new_tokens", 64))
    pol = _one_policy(k, gate, accept, bonus, privacy, cloud_cache, max_new)
    cost = _base_cost(tr, cost_mode, edge_device, cloud_device)
    net = profiles.network_preset(network_name) if network_name else Network()
    if rtt:
        net = replace(net, rtt_s=parse_duration(rtt, "--rtt", require_unit=True))
    fl = Fleet(devices=devices, servers=servers, max_batch=max_batch,
               batch_window_s=parse_duration(batch_window, "--batch-window", require_unit=True),
               batch_slowdown=batch_slowdown, arrival_rate=arrival_rate,
               utterances_per_device=utterances_per_device, seed=seed)
    rp = Replayer(tr)
    df = simulate_fleet(plans(rp, rp.replay(pol)), cost, net, fl, stateful=cloud_cache == "stateful")
    if out:
        write_parquet_atomic(df, out)
    s = fleet_summary(df)
    click.echo(f"policy: {pol.label}   {devices} devices, {servers} servers, batch ≤{max_batch}")
    for key, v in s.items():
        click.echo(f"  {key:<22} {v:,.4g}" if isinstance(v, float) else f"  {key:<22} {v}")
    parts = ["edge_s", "uplink_s", "queue_s", "cloud_s", "downlink_s"]
    click.echo("  mean seconds: " + ", ".join(f"{p[:-2]} {df[p].mean():.3f}" for p in parts))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
