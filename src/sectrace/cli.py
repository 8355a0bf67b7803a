"""The `sectrace` command: thin click wrappers, parse → call → print.

Every user-facing failure is a :class:`UserError`: one sentence on stderr, exit code 2.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from importlib import resources
from pathlib import Path

import click

from . import __version__
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
      sectrace simulate --gate entropy:2.5 --gate margin:0.2 --k 3,5 --rtt 20ms,100ms
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


@main.command()
@click.argument("trace_path", metavar="[TRACE]", required=False, type=click.Path(path_type=Path))
@click.option("--k", "ks", multiple=True, default=["5"], show_default=True,
              help="Block size: drafted tokens per gate decision. Lists sweep: --k 3,5,8.")
@click.option("--gate", "gates", multiple=True, default=["entropy:2.5"], show_default=True,
              help="Gate deciding which blocks go to the cloud; repeat to compare. Known: "
                   "always, never, entropy:T, entropy-mean:T, margin:T, logprob:T, random:P.")
@click.option("--accept", "accept", default="rank:20", show_default=True,
              help="Acceptance rule: top1 (lossless), rank:R (the study: rank:20) or prob:P.")
@click.option("--bonus/--no-bonus", default=True, show_default=True,
              help="When the verifier accepts a whole block, take its next top-1 token for free.")
@click.option("--privacy", type=click.Choice(["token-only", "features", "raw"]), default="features",
              show_default=True, help="What leaves the device: token ids only (blind verifier), plus audio "
                                      "features (the study's setup), or raw audio.")
@click.option("--cloud-cache", type=click.Choice(["stateful", "stateless"]), default="stateful",
              show_default=True, help="Whether the cloud keeps its KV cache between calls of one caption.")
@click.option("--adaptive", default=None, type=float,
              help="Stop drafting a block early after a token the drafter gives less than this probability.")
@click.option("--max-new-tokens", default=None, type=int, help="Caption length cap (default: the trace's).")
@click.option("--rtt", "rtts", multiple=True, default=["50ms"], show_default=True,
              help="Round-trip time edge ⇄ cloud, e.g. 50ms or 0.05s; lists sweep: --rtt 20ms,100ms.")
@click.option("--uplink", default="20Mbit/s", show_default=True, help="Edge → cloud bandwidth.")
@click.option("--downlink", default="50Mbit/s", show_default=True, help="Cloud → edge bandwidth.")
@click.option("--overhead", default="100B", show_default=True, help="Framing bytes per message.")
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
def simulate(trace_path, ks, gates, accept, bonus, privacy, cloud_cache, adaptive, max_new_tokens, rtts, uplink,
             downlink, overhead, cost_mode, edge_tps, edge_prefill, cloud_tps, cloud_prefill, cloud_verify, gate_cost,
             edge_speedup, out, as_json):
    """Replay TRACE under edge-only, cloud-only and hybrid policies and compare them.

    Without TRACE the bundled sample trace is used. Each hybrid policy is every
    combination of --k and --gate; each network is one --rtt. Replay is exact: an
    utterance whose run leaves the explored trie is a coverage miss, counted and left out
    of the means, never guessed.

    \b
    Examples:
      sectrace simulate --rtt 50ms
      sectrace simulate --gate entropy:2.5 --gate margin:0.2 --k 3,5 --rtt 20ms,100ms
      sectrace simulate my-trace --accept top1 --gate always --privacy token-only --out r.parquet
    """
    from dataclasses import replace

    from tqdm import tqdm

    from .gates import parse_gate
    from .protocol import Accept, Policy
    from .simulate import CostModel, Network, Replayer, baselines, fit_costs, simulate as run_sim, summarise
    from .trace import load_trace
    from .units import parse_duration, parse_rate, parse_size

    tr = load_trace(trace_path or sample_trace_path())
    max_new = max_new_tokens or int(tr.manifest["decoding"].get("max_new_tokens", 64))
    acc = Accept.parse(accept)
    k_list = _split(ks, "block size", _int)
    gate_specs = _split(gates, "gate", str)
    gate_objs = [(spec, parse_gate(spec)) for spec in gate_specs]
    policies = list(baselines(max_new))
    for k in k_list:
        for spec, g in gate_objs:
            policies.append(Policy(k=k, gate=g, gate_spec=spec.lower(), accept=acc, bonus=bonus, privacy=privacy,
                                   cloud_cache=cloud_cache, max_new_tokens=max_new,
                                   adaptive=_float_or_none(adaptive)))
    cost = fit_costs(tr.timings) if cost_mode == "fit" else CostModel()
    over = {}
    if edge_tps:
        over.update(edge_step_a=1.0 / edge_tps, edge_step_c=0.0)
    if edge_prefill:
        over.update(edge_prefill_a=parse_duration(edge_prefill, "--edge-prefill"), edge_prefill_b=0.0)
    if cloud_tps:
        over.update(cloud_step_a=1.0 / cloud_tps, cloud_step_c=0.0)
    if cloud_prefill:
        over.update(cloud_prefill_a=parse_duration(cloud_prefill, "--cloud-prefill"), cloud_prefill_b=0.0)
    if cloud_verify:
        over.update(verify_a=parse_duration(cloud_verify, "--cloud-verify"), verify_b=0.0, verify_c=0.0)
    over["gate_s"] = parse_duration(gate_cost, "--gate-cost")
    if any(k != "gate_s" for k in over):
        over["source"] = cost.source + " with overrides from flags"
    cost = replace(cost, **over)
    if edge_speedup <= 0:
        raise UserError("--edge-speedup must be positive")
    if edge_speedup != 1.0:
        cost = replace(cost.scaled(edge_speedup=edge_speedup), source=cost.source + f", edge ×{edge_speedup:g}")
    up, down = parse_rate(uplink, "--uplink"), parse_rate(downlink, "--downlink")
    ovh = parse_size(overhead, "--overhead")
    configs = [(cost, Network(rtt_s=parse_duration(r, "--rtt"), up_Bps=up, down_Bps=down, overhead_bytes=ovh))
               for r in _split(rtts, "RTT", str)]
    rp = Replayer(tr)
    with tqdm(total=len(policies), desc="replaying", unit="policy", disable=None, leave=False) as bar:
        results = run_sim(tr, policies, configs, replayer=rp, progress=bar.update)
    summary = summarise(results)
    if out:
        _write_parquet_atomic(results, out)
    if as_json:
        click.echo(json.dumps({
            "trace": str(tr.path), "synthetic": tr.synthetic, "tool_version": __version__,
            "costs": {k: v for k, v in cost.__dict__.items()}, "summary": summary.to_dicts()}, indent=2,
            default=str))
        return
    _print_table(tr, summary, cost, configs)
    if out:
        click.echo(f"\nper-utterance results: {out} ({results.height} rows; columns in docs/results-format.md)")


def _write_parquet_atomic(df, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        df.write_parquet(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
