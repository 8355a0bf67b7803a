"""Click commands of the collect stage: ``sectrace collect`` and ``sectrace trace merge``.

Heavy imports (torch, transformers) happen inside the commands, so ``sectrace --help``
and the simulator stay light.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import UserError
from ._common import (
    EXPLORE_OPTION,
    grid_policies,
    info,
    progress_bar,
    require_extra,
    unique_policies,
    verbosity_options,
)


@click.command("collect")
@click.argument("manifest", required=False, type=click.Path(path_type=Path))
@click.option("--drafter", required=True,
              help="Edge model: a local directory (or a hub id); a .gguf file with --drafter-runtime llama-cpp.")
@click.option("--verifier", required=True, help="Cloud model: a local directory (or a hub id); same tokenizer.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Trace directory to write (with --reprobe: write the re-probed trace here instead of in place).")
@click.option("--backend", type=click.Choice(["omni-thinker", "qwen2-audio", "causal-lm"]), default="omni-thinker",
              show_default=True, help="Model kind: omni-thinker = Qwen2.5-Omni's thinker (audio in), qwen2-audio = "
                                      "Qwen2-Audio, causal-lm = any AutoModelForCausalLM pair with a text prompt "
                                      "(the manifest's 'text' column).")
@click.option("--drafter-runtime", type=click.Choice(["transformers", "llama-cpp"]), default="transformers",
              show_default=True, help="Where the drafter runs: transformers (a checkpoint folder), or llama-cpp "
                                      "(--drafter is a GGUF file, run by llama.cpp as an edge device runs it; "
                                      "needs the llama-cpp extra and --backend causal-lm; the verifier stays "
                                      "transformers). See docs/collect.md.")
@click.option("--modes", default="audio,blind", show_default=True,
              help="Verifier modes to record: audio (sees the audio/transcript), blind (instruction + tokens).")
@click.option("--prompt", default=None, help="The instruction (audio backends) or the prompt template (causal-lm, "
                                             "with {transcript} where the text goes).")
@click.option("--few-shot", "few_shot", default=0, show_default=True,
              help="Show N reference captions of clips NOT being collected before the prompt (the references' "
                   "style; one per emotion in turn). They come from --few-shot-from, or from the manifest's clips "
                   "beyond --limit; no caption of a collected clip is ever shown.")
@click.option("--few-shot-from", "few_shot_from", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Manifest whose references supply the --few-shot examples (default: the collection's own).")
@click.option("--max-new-tokens", default=64, show_default=True, help="Longest caption explored.")
@click.option("--max-nodes", default=4000, show_default=True, help="Trie node budget per utterance (0 = none).")
@click.option("--policy", "policies", multiple=True,
              help="Explore these policies instead of the default set, e.g. 'k=5 gate=entropy:2.0 accept=rank:10 "
                   "token-only'. Repeatable.")
@EXPLORE_OPTION
@click.option("--extend", type=click.Path(path_type=Path),
              help="Start from this trace and add the states the --policy runs need (its coverage misses).")
@click.option("--edge-device", default="cpu", show_default=True)
@click.option("--edge-threads", default=2, show_default=True,
              help="CPU threads (the study emulated a 2-core edge); llama.cpp's n_threads with --drafter-runtime "
                   "llama-cpp.")
@click.option("--cloud-device", default=None, help="Default: cuda when present, else cpu.")
@click.option("--dtype", default="auto", show_default=True, help="auto, float32, float16 or bfloat16.")
@click.option("--edge-dtype", default=None, help="The drafter's dtype when it differs (the study's edge: float32).")
@click.option("--shard", default=None, help="i/n: collect every n-th utterance from the i-th (0-based); "
                                            "default from SLURM_ARRAY_TASK_ID/COUNT when set.")
@click.option("--limit", type=int, help="Only the first N utterances of the manifest.")
@click.option("--timing-repeats", default=5, show_default=True, help="Repeats per timing probe (after a warm-up).")
@click.option("--no-probes", is_flag=True, help="Skip the timing probes.")
@click.option("--signals", default=None,
              help="Extra drafter-side signals per drafted node, comma-separated (off by default; each costs "
                   "drafter passes): mc-dropout[:n=8:p=0.1:seed=0], stability[:k=8], audio-shift. "
                   "Definitions: docs/trace-format.md.")
@click.option("--reprobe", type=click.Path(path_type=Path),
              help="Re-measure this trace's timing probes on this machine (its models, its first utterance), "
                   "without exploring again; MANIFEST or --data finds the utterance if the trace's record does not.")
@click.option("--data", type=click.Path(path_type=Path),
              help="With --reprobe: a folder holding the trace's dataset manifest (by its recorded file name).")
@verbosity_options
def collect_cmd(manifest, drafter, verifier, out, backend, drafter_runtime, modes, prompt, few_shot, few_shot_from,
                max_new_tokens, max_nodes, policies, explore_grids, extend,
                edge_device, edge_threads, cloud_device, dtype, edge_dtype, shard, limit, timing_repeats, no_probes,
                signals, reprobe, data):
    """Decode MANIFEST's utterances with a real drafter and verifier and write a trace.

    Every exploration policy (default: edge-only, cloud greedy, always-escalate with
    rank ≤ R, the built-in gates at a few thresholds; k in 1, 3, 5, 8) runs live and
    every decoding state it visits is recorded, so replaying any of them reproduces its
    output token for token. Resumable: rerun the same command after a kill.

    \b
    Examples:
      sectrace collect data.jsonl --drafter models/small --verifier models/large --out traces/t1
      sectrace collect data.jsonl ... --out traces/t1.s0 --shard 0/4
      sectrace collect data.jsonl --backend causal-lm --drafter-runtime llama-cpp --drafter small.gguf ...
      sectrace collect data.jsonl ... --signals mc-dropout:n=8:p=0.1,stability,audio-shift
      sectrace collect data.jsonl ... --extend traces/t1 --explore examples/grid.toml --out traces/t2
      sectrace collect data.jsonl ... --limit 12 --few-shot 3 --out traces/fs   # examples from clips 13+
      sectrace trace merge traces/t1.s0 traces/t1.s1 traces/t1.s2 traces/t1.s3 --out traces/t1
      sectrace collect --reprobe traces/t1 --drafter models/small --verifier models/large   # quiet machine
    """
    from ..collect.collector import CollectConfig, collect
    from ..explore import default_exploration
    from ..gates import parse_policy
    from ..models.dataset import parse_shard
    from ..models.signals import parse_signals

    def log(line):  # plain lines on stderr: model loading and probes say what they do, on a terminal or not (-q: not)
        info(line)

    if reprobe is not None:
        _reprobe(reprobe, manifest, data, drafter, verifier, out, edge_device, edge_threads, cloud_device, dtype,
                 edge_dtype, timing_repeats, log)
        return
    if manifest is None or out is None:
        raise UserError("give the dataset MANIFEST and --out TRACE (or --reprobe TRACE to re-measure an existing "
                        "trace's timing probes)")
    if data is not None:
        raise UserError("--data only goes with --reprobe; a collection reads the MANIFEST it is given")
    if few_shot < 0:
        raise UserError(f"--few-shot {few_shot}: give how many example captions to show (0 for none)")
    if few_shot_from is not None and not few_shot:
        raise UserError("--few-shot-from names where examples come from; give --few-shot N as well")

    mode_list = tuple(m.strip() for m in modes.split(",") if m.strip())
    if not mode_list or any(m not in ("audio", "blind") for m in mode_list):
        raise UserError(f"--modes {modes!r}: list audio, blind or both, e.g. --modes audio,blind")
    for name, value, lo, what in (("--max-new-tokens", max_new_tokens, 1, "the longest caption explored"),
                                  ("--limit", limit, 1, "the number of manifest rows to collect"),
                                  ("--max-nodes", max_nodes, 0, "the trie node budget per utterance, 0 = none"),
                                  ("--timing-repeats", timing_repeats, 1, "repeats per timing probe"),
                                  ("--edge-threads", edge_threads, 1, "the drafter's CPU threads")):
        if value is not None and value < lo:
            raise UserError(f"{name} {value} is out of range: it is {what}, so give a whole number of at least {lo}")
    signal_spec = parse_signals(signals)
    if extend and not (policies or explore_grids):
        raise UserError("--extend needs the policies to add: give one or more --policy or --explore GRID")
    pols = unique_policies([parse_policy(p, max_new_tokens) for p in policies]
                           + grid_policies(explore_grids, max_new_tokens))
    if not pols:
        pols = default_exploration(max_new_tokens)
    if cloud_device is None:
        try:
            import torch

            cloud_device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            cloud_device = "cpu"
    require_extra("collect", "collect")
    cfg = CollectConfig(manifest=manifest, drafter=drafter, verifier=verifier, out=out, policies=pols,
                        modes=mode_list, backend=backend, drafter_runtime=drafter_runtime, prompt=prompt,
                        few_shot=few_shot, few_shot_from=few_shot_from, max_new_tokens=max_new_tokens,
                        max_nodes=max_nodes or None, edge_device=edge_device, edge_threads=edge_threads,
                        cloud_device=cloud_device, dtype=dtype, edge_dtype=edge_dtype,
                        shard=parse_shard(shard, os.environ), limit=limit,
                        timing_repeats=timing_repeats, probes=not no_probes, extend=extend, signals=signal_spec)

    def bar(total, initial):
        return progress_bar(total=total, initial=initial, desc="collecting", unit="utt")

    res = collect(cfg, progress_factory=bar, echo=click.echo, log=log)
    if res.get("skipped"):
        return
    c = res["compute"]
    click.echo(f"wrote {res['out']}: {res['utterances']} utterances, {res['nodes']} trie nodes, "
               f"{len(pols)} policies; drafter {c['drafter_tokens_per_node']:.2f} tokens/node, verifier "
               + ", ".join(f"{m} {v:.2f}" for m, v in c["verifier_tokens_per_judged_node"].items())
               + f" tokens/judged node; {res['truncated']} utterances hit the node budget")
    if signal_spec is not None:
        sc = res["signals"]
        click.echo(f"signals {signal_spec.label()}: extra drafter seconds per drafted node "
                   + ", ".join(f"{s} {sc[s]['seconds_per_drafted_node'] * 1e3:.1f} ms" for s in signal_spec.names)
                   + f" (the draft itself: {sc['drafter_seconds_per_drafted_node'] * 1e3:.1f} ms)")


def _reprobe(trace, manifest, data, drafter, verifier, out, edge_device, edge_threads, cloud_device, dtype, edge_dtype,
             timing_repeats, log):
    from ..collect.collector import CollectConfig, reprobe

    if not trace.exists():
        raise UserError(f"no trace at {trace} to re-probe")
    if cloud_device is None:
        import torch

        cloud_device = "cuda" if torch.cuda.is_available() else "cpu"
    require_extra("collect --reprobe", "collect")
    cfg = CollectConfig(manifest=manifest, drafter=drafter, verifier=verifier, out=out or trace, policies=[],
                        edge_device=edge_device, edge_threads=edge_threads, cloud_device=cloud_device, dtype=dtype,
                        edge_dtype=edge_dtype, timing_repeats=timing_repeats)
    res = reprobe(trace, cfg, out=out, data=data, log=log)
    load = res["load"]
    click.echo(f"wrote {res['out']}: {res['timings']} timings (was {res['previous_timings']}); other processes used "
               f"{load['other_processes_cores']:.2f} of {load['cpus']} CPUs meanwhile"
               + (" (busy: see the warning above)" if load["busy"] else " (quiet)"))
