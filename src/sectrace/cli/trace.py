"""`sectrace trace ...`: make, inspect, check and merge traces."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from ._common import (
    EXPLORE_OPTION,
    grid_policies,
    load_trace_or_sample,
    progress_bar,
    to_json,
    unique_policies,
    verbosity_options,
)


@click.group()
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
@click.option("--policy", "policies", multiple=True,
              help="Also explore this policy (as labelled in results, e.g. 'k=4 gate=margin:0.2 accept=rank:5 "
                   "token-only'); repeatable. Fills the coverage misses that simulate and sweep report.")
@EXPLORE_OPTION
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@verbosity_options
def trace_synth(out, utterances, alpha, alpha_blind, coupling, mean_length, max_new_tokens, seed, policies,
                explore_grids, force):
    """Write a synthetic trace to OUT from a stated statistical model.

    At every decoding state the verifier keeps the drafter's token with probability
    ALPHA, independently: the model under which Leviathan et al. derive the expected
    tokens per verification call, (1 − α^(k+1)) / (1 − α). The default exploration
    (edge-only, cloud greedy, always-escalate with rank ≤ R, built-in gates at a few
    thresholds, for k in 1, 3, 5, 8) is recorded in the trie. The trace says it is
    synthetic everywhere it shows.

    \b
    Examples:
      sectrace trace synth my-trace --utterances 40 --seed 0
      sectrace trace synth hard-trace --alpha 0.5 --coupling 0.9 --force
      sectrace trace synth wide-trace --policy 'k=4 gate=entropy:2.5 accept=rank:20 features'
      sectrace trace synth grid-trace --explore examples/grid.toml   # every policy the sweep asks for
    """
    from ..explore import default_exploration
    from ..explore.synth import AlphaModel, synth_trace
    from ..gates import parse_policy
    from ..trace import write_trace

    if utterances < 1:
        raise UserError("--utterances must be at least 1")
    if out.exists() and not force:
        raise UserError(f"{out} already exists; choose another path or pass --force to replace it")
    model = AlphaModel(alpha=alpha, alpha_blind=alpha_blind, coupling=coupling, mean_length=mean_length, seed=seed)
    extra = [parse_policy(p, max_new_tokens) for p in policies] + grid_policies(explore_grids, max_new_tokens)
    policies = unique_policies(default_exploration(max_new_tokens) + extra)
    with progress_bar(total=utterances, desc="exploring", unit="utt") as bar:
        manifest, utts, nodes, timings, vocab = synth_trace(model, utterances, policies, progress=bar.update)
    write_trace(out, manifest, utts, nodes, timings, vocab, overwrite=force)
    click.echo(f"wrote synthetic trace {out}: {utterances} utterances, {nodes.height} trie nodes, "
               f"{len(policies)} exploration policies")


@trace.command("info")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), help="Also look for the dataset manifest in this folder.")
@click.option("--manifest", type=click.Path(path_type=Path), help="Check this file as the trace's dataset manifest.")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON instead.")
@verbosity_options
def trace_info(path, data, manifest, as_json):
    """Validate a trace and describe it (the bundled sample if PATH is omitted).

    The `needs` line says what replaying does not need but validating and re-probing do:
    the dataset manifest the trace was collected from (found by the path the trace records,
    relative to itself, or by name and content under --data) and the audio it names.

    \b
    Examples:
      sectrace trace info                # the bundled sample trace
      sectrace trace info my-trace --json
      sectrace trace info my-trace --data ../datasets
    """
    tr = load_trace_or_sample(path)
    m = tr.manifest
    trie = tr.trie()  # built and checked while loading: nothing here reads the nodes table again
    per_utt, n_nodes = trie.counts, trie.n
    if as_json:
        from ..simulate.provenance import trace_sha256

        click.echo(to_json({"trace": str(tr.path), "name": tr.name, "sha256": trace_sha256(tr),
                            "synthetic": tr.synthetic, "schema_version": m["schema_version"],
                            "tool_version": m["tool_version"], "created": m["created"], "drafter": m["drafter"],
                            "verifier": m["verifier"], "verifier_modes": list(tr.modes),
                            "dataset": m["dataset"], "utterances": tr.utterances.height, "nodes": n_nodes,
                            "nodes_per_utterance": {"min": int(per_utt.min()), "max": int(per_utt.max())},
                            "timings": tr.timings.height, "valid": True}))
        return
    click.echo(f"trace       {tr.path}")
    click.echo(f"synthetic   {'YES: numbers illustrate the method, not real models' if tr.synthetic else 'no'}")
    click.echo(f"schema      v{m['schema_version']}, written by sectrace {m['tool_version']} on {m['created']}")
    click.echo(f"drafter     {m['drafter']['name']} ({m['drafter']['revision']}, vocab {m['drafter']['vocab_size']})")
    click.echo(f"verifier    {m['verifier']['name']} ({m['verifier']['revision']}, vocab {m['verifier']['vocab_size']}), "
               f"modes {', '.join(tr.modes)}")
    click.echo(f"dataset     {m['dataset'].get('name')}: {tr.utterances.height} utterances")
    click.echo(f"trie        {n_nodes} nodes ({per_utt.min()}–{per_utt.max()} per utterance)")
    click.echo(f"timings     {tr.timings.height} measured calls" + _load_note(m))
    for line in _needs(tr, data, manifest):
        click.echo(line)
    click.echo("valid       yes")


def _load_note(m: dict) -> str:
    load = (m.get("hardware") or {}).get("probe_load")
    if not load:
        return ""
    state = "BUSY" if load.get("busy") else "quiet"
    return f"; machine {state} while probing (other processes {load.get('other_processes_cores', 0):.2f} CPUs)"


def _needs(tr, data, manifest) -> list[str]:
    """What the trace needs beyond itself (for validate and --reprobe), and whether it is here."""
    from ..models.dataset import locate_dataset

    ds = tr.manifest.get("dataset") or {}
    if tr.synthetic or not (ds.get("manifest") or ds.get("file")):
        return ["needs       nothing beyond itself (no dataset recorded)"]
    look = locate_dataset(ds, tr.path, tr.utterances["utt_id"].to_list(), manifest=manifest, data=data)
    what = f"needs       dataset manifest {look.file}" + (f" ({look.content})" if look.content else "")
    if look.ok:
        audio = [u for u in look.utterances if u.audio is not None]
        lines = [f"{what}: found at {look.found}"]
        if audio:
            miss = len(look.audio_missing)
            lines.append(f"            audio: {len(audio) - miss} of {len(audio)} files present"
                         + (f" (missing e.g. {look.audio_missing[0]})" if miss else ""))
        return lines
    from ..trace import sample_trace_path

    remake = ""
    if (ds.get("recipe") or {}).get("texts"):
        bundled = tr.path is not None and Path(tr.path).resolve() == sample_trace_path().resolve()
        remake = "; `sectrace demo data DIR" + ("" if bundled else f" --trace {tr.path}") + "` remakes it"
    return [f"{what}: not here ({'; '.join(f'{p}: {why}' for p, why in look.tried) or 'no location recorded'})",
            f"            give --data DIR or --manifest FILE to validate or re-probe{remake}"]


@trace.command("adopt-probes")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--from", "source", required=True, type=click.Path(path_type=Path),
              help="The trace whose timing probes to take: same models, backend, prompt and edge threads.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the result here instead of updating PATH in place.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@verbosity_options
def trace_adopt_probes(path, source, out, force):
    """Give the trace at PATH the timing probes of another trace of the same models.

    The trie (what the models said) does not depend on how busy the machine was; the
    probes that price it do. A trace explored beside other work, or re-collected only
    to add signals (`collect --no-probes`), can take the probes a quiet collection of
    the same models measured. Refused unless both traces record the same models (name,
    architecture, parameters, dtype, tokenizer), backend, prompt and edge threads; the
    manifest records where the probes came from (`hardware.timings_from`).

    \b
    Examples:
      sectrace trace adopt-probes build/demo-trace --from src/sectrace/data/sample-trace
      sectrace trace adopt-probes busy-trace --from quiet-trace --out priced-trace
    """
    from ..fsio import check_output
    from ..trace import load_trace, rebase_paths, write_trace
    from ..trace.adopt import adopt_timings

    tr, src = load_trace(path), load_trace(source)
    if out is not None:
        check_output(out, force, suffixes=None, directory=True)
    manifest, timings = adopt_timings(tr, src)
    dest = Path(out) if out is not None else Path(path)
    if out is not None:
        manifest = rebase_paths(manifest, path, dest)
    write_trace(dest, manifest, tr.utterances, tr.nodes, timings, tr.vocab, overwrite=out is None or force)
    click.echo(f"wrote {dest}: {timings.height} timings from {source} (was {tr.timings.height}); trie unchanged "
               f"({tr.nodes.height} nodes)")


@trace.command("merge")
@click.argument("shards", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Merged trace directory.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@verbosity_options
def trace_merge(shards, out, force):
    """Join the shard traces of one `sectrace collect` run into one trace.

    \b
    Examples:
      sectrace trace merge shard-0 shard-1 shard-2 --out trace
      sectrace trace merge shards/* --out trace --force
    """
    from ..collect.collector import merge_traces

    res = merge_traces(list(shards), out, force=force)
    click.echo(f"wrote {out}: {res['shards']} shards, {res['utterances']} utterances, {res['nodes']} nodes"
               + ("" if res["complete"] else " (some shards are missing)"))
