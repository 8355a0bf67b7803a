"""What several commands share: the extras each needs, list-valued options, policy and cost flags.

Imports here are light (click and the core); heavy packages are imported inside functions.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from ..errors import UserError

#: Each optional extra and the top-level modules it brings (pyproject.toml's optional-dependencies).
EXTRAS = {
    "collect": ("torch", "transformers", "soundfile"),
    "report": ("matplotlib", "jinja2", "pycocoevalcap"),
    "gates": ("sklearn",),
    "live": ("fastapi", "uvicorn", "httpx", "msgpack", "pydantic"),
    "demo": ("torch", "transformers", "gguf", "faster_whisper", "platformdirs"),
    "dask": ("dask", "distributed"),
}
_TORCH_FIRST = " (on a CPU-only machine install torch==2.13.0 first, or pip pulls a multi-GB CUDA build)"


def _install_hint(extra: str) -> str:
    torch = "torch" in EXTRAS[extra]
    return f"pip install 'sectrace[{extra}]'" + (_TORCH_FIRST if torch else "")


def missing_extra_message(module: str | None, command: str | None) -> str | None:
    """One sentence for a ModuleNotFoundError of an optional package, or None for anything else."""
    top = (module or "").split(".")[0]
    for extra, mods in EXTRAS.items():
        if top in mods:
            what = f"`sectrace {command}`" if command else "this command"
            return f"{what} needs {top}, from the '{extra}' extra: {_install_hint(extra)}"
    return None


def require_extra(command: str, *extras: str) -> None:
    """Refuse at once, before any work, when an extra the command needs is not installed."""
    for extra in extras:
        missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(f"`sectrace {command}` needs the '{extra}' extra ({', '.join(missing)} not installed): "
                            f"{_install_hint(extra)}")


def command_line(ctx: click.Context | None = None) -> str:
    """The running command as one could type it again: ``sectrace`` and the subcommand, then every
    argument and option given on the command line (defaults left out, so a reader sees what was chosen).

    Rebuilt from click's parsed parameters rather than ``sys.argv``, which is the test runner's under
    CliRunner and holds nothing useful when sectrace is called as a library."""
    import shlex

    from click.core import ParameterSource

    ctx = ctx or click.get_current_context()
    words = ["sectrace", *ctx.command_path.split()[1:]]
    for p in ctx.command.params:
        src = ctx.get_parameter_source(p.name)
        if src not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        value = ctx.params.get(p.name)
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(p, click.Argument):
            words += [str(v) for v in values if v is not None]
            continue
        if getattr(p, "is_flag", False) or getattr(p, "is_bool_flag", False):
            if p.secondary_opts:
                words.append(p.opts[0] if value else p.secondary_opts[0])
            elif value:
                words.append(p.opts[0])
            continue
        for v in values:
            words += [p.opts[0], str(v)]
    return shlex.join(words)


def to_json(obj) -> str:
    """JSON for ``--json``: NaN and infinities (undefined metrics, intervals that cannot be computed) become
    null, which every JSON reader accepts (``NaN`` is not JSON); other odd values become their text."""
    import json
    import math

    def clean(x):
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:  # numpy scalars
            return clean(x.item())
        return x

    return json.dumps(clean(obj), indent=2, default=str, allow_nan=False)


def load_trace_or_sample(path):
    """The trace at ``path``, or the bundled sample trace when none is given."""
    from ..trace import load_trace, sample_trace_path

    return load_trace(path or sample_trace_path())


def grid_policies(paths, max_new_tokens: int) -> list:
    """The policies of sweep grid files (their [policy] tables and baselines), for exploring what a sweep will ask:
    `trace synth --explore GRID` and `collect --explore GRID` record every state those policies visit, so the
    sweep replays with no coverage miss. Only the policies are read; the grid's size bounds are the sweep's."""
    from ..simulate.sweep import load_grid

    out = []
    for path in paths:
        out += load_grid(Path(path), max_new_tokens, force=True)[0]
    return out


EXPLORE_OPTION = click.option(
    "--explore", "explore_grids", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also explore every policy of this sweep grid file (its [policy] table), so `sectrace sweep GRID` on the "
         "result has no coverage miss; repeatable.")


def split_list(values, what, parse):
    """Flatten repeated and comma-separated option values (``--k 3,5 --k 8``) and parse each."""
    out = []
    for v in values:
        for part in str(v).split(","):
            if part.strip():
                out.append(parse(part.strip()))
    if not out:
        raise UserError(f"give at least one {what}")
    return out


def block_size(text):
    try:
        k = int(text)
    except ValueError:
        raise UserError(f"block size {text!r} is not a whole number; e.g. --k 5 or --k 3,5,8") from None
    if k < 1:
        raise UserError(f"block size {k} must be at least 1; e.g. --k 5")
    return k


def positive_float(what: str, example: str):
    def parse(text):
        import math

        try:
            x = float(text)
        except ValueError:
            raise UserError(f"{what} {text!r} is not a number; e.g. {example}") from None
        if not (math.isfinite(x) and x > 0):
            raise UserError(f"{what} {text!r} must be a positive finite number; e.g. {example}")
        return x
    return parse


def one_policy(k, gate, accept, bonus, privacy, cloud_cache, max_new):
    from ..gates import parse_gate
    from ..protocol import Accept, Policy

    return Policy(k=block_size(k), gate=parse_gate(gate), gate_spec=gate.lower(), accept=Accept.parse(accept),
                  bonus=bonus, privacy=privacy, cloud_cache=cloud_cache, max_new_tokens=max_new)


POLICY_OPTIONS = [
    click.option("--k", default=5, show_default=True, help="Block size."),
    click.option("--gate", default="entropy:2.5", show_default=True, help="Gate (always, entropy:T, margin:T, ...)."),
    click.option("--accept", default="rank:20", show_default=True, help="Acceptance rule: top1, rank:R, prob:P."),
    click.option("--bonus/--no-bonus", default=True, show_default=True, help="Take the verifier's bonus token."),
    click.option("--privacy", type=click.Choice(["token-only", "features", "raw"]), default="features",
                 show_default=True, help="What leaves the device: token ids, plus audio features, or raw audio."),
    click.option("--cloud-cache", type=click.Choice(["stateful", "stateless"]), default="stateful",
                 show_default=True, help="Whether the cloud keeps its KV cache between calls of one caption."),
    click.option("--costs", "cost_mode", type=click.Choice(["fit", "study"]), default="fit", show_default=True,
                 help="Costs fitted to the trace's timings, or the study's devices."),
    click.option("--edge-device", default=None, help="Edge device preset (see docs/simulator.md)."),
    click.option("--cloud-device", default=None, help="Cloud device preset (see docs/simulator.md)."),
]


def with_options(opts):
    def deco(f):
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


def out_option(help_text: str, required: bool = False):
    return click.option("--out", type=click.Path(path_type=Path), required=required, help=help_text)


FORCE_OPTION = click.option("--force", is_flag=True, help="Replace --out if it exists.")
#: sweep, breakeven and fleet: --force also lets a run past the size bounds (docs/simulator.md) start.
FORCE_BIG_OPTION = click.option("--force", is_flag=True,
                                help="Replace --out if it exists, and run past the size bounds (docs/simulator.md).")


class Progress:
    """A progress bar that names the step it is on: ``with Progress(8, "report") as tick: tick(1, "scoring")``.

    tqdm draws it on a terminal and stays quiet in logs and pipes."""

    def __init__(self, total: int, desc: str, unit: str = "step"):
        self.desc, self.total, self.unit = desc, total, unit

    def __enter__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, disable=None, leave=False)
        return self

    def __call__(self, n: int = 1, name: str | None = None):
        if name:
            self.bar.set_description(f"{self.desc}: {name}")
        self.bar.update(n)

    def __exit__(self, *exc):
        self.bar.close()
