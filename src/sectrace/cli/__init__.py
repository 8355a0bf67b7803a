"""The `sectrace` command: one module per stage, each parse → call → print.

Commands are imported when they run (a lazy group), and each imports its extra's packages
inside the command, so ``sectrace --help`` and ``sectrace simulate`` need only the core
dependencies. Every user-facing failure is a :class:`UserError`: one sentence on stderr, exit 2;
a missing extra is one such sentence naming the ``pip install`` that fixes it.
"""

from __future__ import annotations

import importlib

import click

from ..errors import UserError
from ..version import __version__
from ._common import missing_extra_message, verbosity_options

#: name → (module, attribute), in the order `sectrace --help` lists them.
COMMANDS = {
    "simulate": ("simulate", "simulate"),
    "sweep": ("scale", "sweep"),
    "breakeven": ("scale", "breakeven"),
    "fleet": ("scale", "fleet"),
    "trace": ("trace", "trace"),
    "collect": ("collect", "collect_cmd"),
    "gates": ("gates", "gates"),
    "report": ("report", "report"),
    "timeline": ("report", "timeline"),
    "study": ("report", "study"),
    "serve": ("live", "serve"),
    "validate": ("live", "validate"),
    "data": ("demo", "data"),
    "weights": ("demo", "weights"),
    "demo": ("demo", "demo"),
}


class _Main(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        try:
            return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        except ModuleNotFoundError as exc:  # a command module that imports an extra at its top: still one sentence
            msg = missing_extra_message(exc.name, name)
            if msg is None:
                raise
            raise UserError(msg) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except ModuleNotFoundError as exc:
            msg = missing_extra_message(exc.name, ctx.invoked_subcommand)
            if msg is None:
                raise
            click.echo(f"error: {msg}", err=True)
            ctx.exit(2)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sectrace")
@verbosity_options
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

    \b
    One grammar (docs/cli.md): a command that reads a trace takes it as --trace PATH (-t),
    list options take 3,5,8 or repeat, every command that prints results has --json, and
    -q / -v (here or on any command) silence progress or add time per step.
    """
