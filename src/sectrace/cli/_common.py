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
        if p.name == "positional_trace":  # the deprecated spelling, recorded as the one to type now
            words += ["--trace", str(value)] if value is not None else []
            continue
        if isinstance(p, click.Argument):
            words += [str(v) for v in values if v is not None]
            continue
        flag = next((o for o in p.opts if o.startswith("--")), p.opts[0])  # the long spelling reads best
        if getattr(p, "is_flag", False) or getattr(p, "is_bool_flag", False):
            if p.secondary_opts:
                words.append(flag if value else p.secondary_opts[0])
            elif value:
                words.append(flag)
            continue
        for v in values:
            words += [flag, str(v)]
    return shlex.join(words)


def to_json(obj, indent: int | None = 2) -> str:
    """JSON for ``--json``: NaN and infinities (undefined metrics, intervals that cannot be computed) become
    null, which every JSON reader accepts (``NaN`` is not JSON); other odd values become their text.
    ``indent=None``: one line (JSON Lines, one object per input)."""
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

    return json.dumps(clean(obj), indent=indent, default=str, allow_nan=False)


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


def unique_policies(policies: list) -> list:
    """Each policy once, by label, first occurrence kept (a grid repeats baselines the exploration has)."""
    seen = {}
    for p in policies:
        seen.setdefault(p.label, p)
    return list(seen.values())


EXPLORE_OPTION = click.option(
    "--explore", "explore_grids", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Explore every policy of this sweep grid file (its [policy] table and baselines) as --policy does, so "
         "`sectrace sweep GRID` on the result has no coverage miss; repeatable.")


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


def adaptive_threshold(text):
    """An adaptive-k threshold (a drafter probability) or ``off``: None."""
    text = str(text).strip().lower()
    if text in ("", "off", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise UserError(f"adaptive threshold {text!r} is not a probability; e.g. --adaptive 0.3 or off") from None


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


def flag_policies(ks, gates, accept, bonus, privacy, cloud_cache, max_new, trace=None):
    """Every combination of the --k and --gate lists (``--k 3,5 --gate entropy:2.5,margin:0.3``), as simulate
    builds them, so the commands that run one policy at a time loop over the same set."""
    from ..gates import parse_gate, split_top
    from ..protocol import Accept, Policy

    acc = Accept.parse(accept)
    specs = [s.strip() for g in gates for s in split_top(str(g)) if s.strip()]
    if not specs:
        raise UserError("give at least one gate, e.g. --gate entropy:2.5")
    return [Policy(k=k, gate=parse_gate(spec, trace), gate_spec=spec.lower(), accept=acc, bonus=bonus,
                   privacy=privacy, cloud_cache=cloud_cache, max_new_tokens=max_new)
            for k in split_list(ks, "block size", block_size) for spec in specs]


#: Every privacy mode a policy can be built with (protocol.policy.PRIVACY_MODES), offered by every command that
#: builds one.
PRIVACY_CHOICES = ("token-only", "features", "raw")
PRIVACY_HELP = "What leaves the device: token ids only (blind verifier), plus audio features, or raw audio."


POLICY_OPTIONS = [
    click.option("--k", "ks", multiple=True, default=["5"], show_default=True,
                 help="Block size; several run each: --k 3,5,8."),
    click.option("--gate", "gates", multiple=True, default=["entropy:2.5"], show_default=True,
                 help="Gate (always, entropy:T, margin:T, ...; see `sectrace gates list`); several run each."),
    click.option("--accept", default="rank:20", show_default=True, help="Acceptance rule: top1, rank:R, prob:P."),
    click.option("--bonus/--no-bonus", default=True, show_default=True, help="Take the verifier's bonus token."),
    click.option("--privacy", type=click.Choice(PRIVACY_CHOICES), default="features", show_default=True,
                 help=PRIVACY_HELP),
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

    tqdm draws it on a terminal and stays quiet in logs and pipes and under -q; under -v each named step's time
    goes to stderr when the next one starts."""

    def __init__(self, total: int, desc: str, unit: str = "step"):
        self.desc, self.total, self.unit = desc, total, unit
        self.current = None

    def __enter__(self):
        self.bar = progress_bar(total=self.total, desc=self.desc, unit=self.unit, leave=False)
        return self

    def _close_step(self):
        if self.current is not None:
            self.current.__exit__(None, None, None)

    def __call__(self, n: int = 1, name: str | None = None):
        if name:
            self._close_step()
            self.current = step(f"{self.desc}: {name}").__enter__()
            self.bar.set_description(f"{self.desc}: {name}")
        self.bar.update(n)

    def __exit__(self, *exc):
        if exc[0] is None:
            self._close_step()
        self.bar.close()


# --- the grammar every command shares (docs/cli.md) -------------------------------------------------------------

class _DeprecatedTrace(click.Argument):
    """The positional TRACE of the last release: still parsed, no longer shown in the usage line."""

    def get_usage_pieces(self, ctx):
        return []


def _sectrace_path(ctx: click.Context) -> str:
    """``sectrace gates train`` whatever name the program was started under (CliRunner calls it ``main``)."""
    return " ".join(["sectrace", *ctx.command_path.split()[1:]])


def trace_option(help_text: str = "The trace to read (default: the bundled sample trace).", *,
                 required: bool = False, positional: bool = True):
    """``--trace/-t PATH``: the one way a command is given the trace it reads.

    ``positional`` also accepts the last release's ``sectrace CMD TRACE`` for one more release, with one
    deprecation line on stderr; both forms at once is an error. ``required`` is checked here rather than by
    click, so that the positional form still satisfies it. The callback receives ``trace_path`` either way.
    The ``trace`` group's own subcommands take the trace they act on positionally instead: it is their object,
    not an input."""
    import functools

    def deco(f):
        @functools.wraps(f)
        def wrapper(*args, **kw):
            given, old = kw.get("trace_path"), kw.pop("positional_trace", None)
            ctx = click.get_current_context()
            cmd = _sectrace_path(ctx)
            if old is not None:
                if given is not None:
                    raise UserError(f"give the trace once, as --trace {given}, not also as the positional {old} "
                                    "(the positional form is deprecated)")
                click.echo(f"warning: `{cmd} TRACE` is deprecated; use `{cmd} --trace TRACE` (the positional "
                           "form goes in the next release)", err=True)
                kw["trace_path"] = old
            if required and kw.get("trace_path") is None:
                raise UserError(f"`{cmd}` needs the trace to read: give --trace PATH")
            return f(*args, **kw)

        wrapper = click.option("-t", "--trace", "trace_path", type=click.Path(path_type=Path), default=None,
                               help=help_text)(wrapper)
        if positional:
            wrapper = click.argument("positional_trace", cls=_DeprecatedTrace, required=False,
                                     type=click.Path(path_type=Path))(wrapper)
        return wrapper
    return deco


_VERBOSITY = "sectrace.verbosity"


def _set_verbosity(ctx, param, value):
    if not value:
        return
    level = -1 if param.name == "quiet" else 1
    meta = ctx.find_root().meta
    if meta.get(_VERBOSITY, 0) not in (0, level):
        raise UserError("give -q (quiet) or -v (verbose), not both")
    meta[_VERBOSITY] = level


def verbosity_options(f):
    """``-q/--quiet`` and ``-v/--verbose``, the same on the main group and on every leaf, stored once (the root
    context's meta) so ``sectrace -q simulate`` and ``sectrace simulate -q`` mean one thing."""
    f = click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_set_verbosity,
                     help="More detail on stderr where the command has it (time per step).")(f)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_verbosity,
                        help="No progress bars or informational lines on stderr (errors, warnings and results "
                             "stay).")(f)


def verbosity() -> int:
    """-1 quiet, 0 normal, 1 verbose (0 when sectrace runs as a library, outside a command)."""
    ctx = click.get_current_context(silent=True)
    return ctx.find_root().meta.get(_VERBOSITY, 0) if ctx is not None else 0


def info(line: str) -> None:
    """An informational line on stderr (what is loading, what was skipped): silenced by -q. A line that starts
    with ``warning:`` is a warning, not information, and is always shown."""
    if verbosity() >= 0 or str(line).startswith("warning:"):
        click.echo(line, err=True)


def detail(line: str) -> None:
    """A line only -v asks for (time per step)."""
    if verbosity() > 0:
        click.echo(line, err=True)


def progress_bar(**kw):
    """tqdm as every command draws it: on a terminal, not in logs and pipes, never under -q."""
    from tqdm import tqdm

    return tqdm(disable=True if verbosity() < 0 else None, **kw)


class step:
    """``with step("replaying"):`` — under -v, one stderr line with the seconds the step took."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        import time

        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import time

        if exc[0] is None:
            detail(f"{self.name}: {time.perf_counter() - self.t0:.2f} s")



def refuse_several(values, flag: str, why: str):
    """The one value of a list-style option a command takes only once, or one sentence saying why and where to go."""
    if len(values) > 1:
        raise UserError(f"{flag} takes one value here ({why}); got {', '.join(map(str, values))}")
    return values[0]
