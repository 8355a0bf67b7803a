"""One CLI grammar (issue 19, docs/cli.md), checked on every leaf of the click tree and by running commands.

The rules: a command that reads a trace takes it as ``--trace/-t PATH`` (the ``trace`` group's own subcommands
take the trace they act on positionally: it is their object); list-style options take ``3,5,8`` and repeat;
``--privacy`` offers every privacy mode; every command that prints results has ``--json``; every command takes
``-q`` and ``-v``."""

from __future__ import annotations

import json

import click
import polars as pl
import pytest
from click.testing import CliRunner

from sectrace.cli import COMMANDS, main
from sectrace.cli._common import PRIVACY_CHOICES
from sectrace.protocol import PRIVACY_MODES
from sectrace.trace import sample_trace_path


def _leaves(cmd=main, path=()):
    ctx = click.Context(main)
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            yield from _leaves(cmd.get_command(ctx, name), path + (name,))
    else:
        yield " ".join(path), cmd


LEAVES = dict(_leaves())
IDS = list(LEAVES)

#: The commands that read a trace as an input. A new command that reads one joins this set (and so gets the
#: checks below); test_no_other_command_takes_a_trace catches one that forgot to.
READS_TRACE = {"simulate", "sweep", "breakeven", "fleet", "gates train", "gates eval", "gates frontier", "validate",
               "study", "report", "timeline", "demo data", "demo validate"}
#: Commands whose trace is their object (inspect it, merge them, make one): positional by the rule's exception.
TRACE_IS_THE_OBJECT = {"trace info", "trace merge", "trace synth", "trace adopt-probes"}
#: Commands that print results (numbers, tables, descriptions): each has --json.
PRINTS_RESULTS = {"simulate", "sweep", "breakeven", "fleet", "trace info", "gates list", "gates train", "gates eval",
                  "gates frontier", "validate", "study", "data describe", "weights status", "demo validate"}
#: Commands that make files or run a service and print where it went: no results to give as JSON.
MAKES_FILES = {"trace synth", "trace merge", "trace adopt-probes", "collect", "report", "timeline", "serve", "data synth", "weights setup",
               "demo data", "demo collect"}
#: Options that take several values in every command that has them (comma-separated and repeated).
LIST_OPTIONS = {"--k", "--gate", "--rtt", "--adaptive", "--arrival-rate", "--edge-tps", "--policy", "--features"}
#: (command, option) that name one thing by design (none today: timeline takes several policies too).
ONE_BY_DESIGN: set[tuple[str, str]] = set()


def _opt(cmd, flag):
    return next((p for p in cmd.params if isinstance(p, click.Option) and flag in p.opts + p.secondary_opts), None)


def test_the_tree_is_what_the_rules_name():
    """Every leaf is classified for --json, and the trace sets name real commands: a new command must choose."""
    assert set(COMMANDS) <= {p.split()[0] for p in LEAVES}
    assert PRINTS_RESULTS | MAKES_FILES == set(LEAVES) and not PRINTS_RESULTS & MAKES_FILES
    assert READS_TRACE | TRACE_IS_THE_OBJECT <= set(LEAVES)


@pytest.mark.parametrize("name", sorted(READS_TRACE))
def test_a_trace_input_is_the_trace_option(name):
    cmd = LEAVES[name]
    opt = _opt(cmd, "--trace")
    assert opt is not None and "-t" in opt.opts and not opt.required, f"`sectrace {name}` lacks --trace/-t"
    ctx = cmd.make_context(name, ["--help"], resilient_parsing=True)
    usage = cmd.get_usage(ctx)
    assert "TRACE" not in usage.split("[OPTIONS]")[-1], f"`sectrace {name}` still shows a positional trace: {usage}"
    for p in cmd.params:
        if isinstance(p, click.Argument) and "trace" in (p.name or ""):
            assert not p.required, f"`sectrace {name}` requires a positional trace"


@pytest.mark.parametrize("name", IDS)
def test_no_other_command_takes_a_trace(name):
    """Outside READS_TRACE and the trace group, no parameter is named after a trace (collect's --extend and
    --reprobe name the trace by its role)."""
    if name in READS_TRACE or name in TRACE_IS_THE_OBJECT:
        return
    names = [p.name or "" for p in LEAVES[name].params]
    assert not [n for n in names if "trace" in n], f"`sectrace {name}` reads a trace but is not in READS_TRACE"


@pytest.mark.parametrize("name", IDS)
def test_list_options_take_lists(name):
    for p in LEAVES[name].params:
        if isinstance(p, click.Option) and set(p.opts) & LIST_OPTIONS and (name, p.opts[0]) not in ONE_BY_DESIGN:
            assert p.multiple, f"`sectrace {name} {p.opts[0]}` takes one value; list options repeat and take 3,5"


def test_privacy_choices_are_every_mode():
    assert tuple(PRIVACY_CHOICES) == tuple(PRIVACY_MODES)
    seen = []
    for name, cmd in LEAVES.items():
        opt = _opt(cmd, "--privacy")
        if opt is not None:
            seen.append(name)
            assert tuple(opt.type.choices) == tuple(PRIVACY_MODES), f"`sectrace {name} --privacy` misses a mode"
    assert {"simulate", "breakeven", "fleet", "gates frontier"} <= set(seen)


@pytest.mark.parametrize("name", sorted(PRINTS_RESULTS))
def test_results_have_json(name):
    opt = _opt(LEAVES[name], "--json")
    assert opt is not None and opt.is_flag, f"`sectrace {name}` prints results but has no --json"


@pytest.mark.parametrize("name", IDS)
def test_every_leaf_takes_quiet_and_verbose(name):
    cmd = LEAVES[name]
    for short, long in (("-q", "--quiet"), ("-v", "--verbose")):
        opt = _opt(cmd, long)
        assert opt is not None and short in opt.opts, f"`sectrace {name}` lacks {short}/{long}"


def test_the_main_group_takes_quiet_and_verbose():
    assert _opt(main, "--quiet") is not None and _opt(main, "--verbose") is not None


# --- behaviour --------------------------------------------------------------------------------------------------

def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_the_positional_trace_still_works_with_one_deprecation_line(small_trace_path):
    new = _run(["simulate", "--trace", str(small_trace_path), "--rtt", "50ms", "--json"])
    old = _run(["simulate", str(small_trace_path), "--rtt", "50ms", "--json"])
    assert new.exit_code == old.exit_code == 0, old.output
    assert new.stderr == ""
    assert old.stderr.splitlines() == ["warning: `sectrace simulate TRACE` is deprecated; use `sectrace simulate "
                                       "--trace TRACE` (the positional form goes in the next release)"]
    assert json.loads(old.stdout) == json.loads(new.stdout)  # the recorded command is the --trace spelling too
    assert json.loads(new.stdout)["provenance"]["command"].startswith("sectrace simulate --trace ")


@pytest.mark.parametrize("words,rest", [(["gates", "frontier"], ["--gate", "entropy"]),
                                        (["breakeven"], ["--edge-tps", "2", "--rtt", "50ms"]),
                                        (["fleet"], ["--devices", "2", "--utterances-per-device", "1"])])
def test_the_positional_trace_warns_in_other_commands(words, rest):
    r = _run([*words, str(sample_trace_path()), *rest])
    assert r.exit_code == 0, r.output
    path = " ".join(words)
    assert r.stderr.splitlines() == [f"warning: `sectrace {path} TRACE` is deprecated; use `sectrace {path} --trace "
                                     "TRACE` (the positional form goes in the next release)"]


def test_both_trace_forms_at_once_is_one_sentence(small_trace_path):
    r = CliRunner().invoke(main, ["simulate", str(small_trace_path), "--trace", str(small_trace_path)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: give the trace once")
    assert len([ln for ln in lines if ln.startswith("error")]) == 1


def test_a_required_trace_is_asked_for_in_one_sentence(tmp_path):
    r = CliRunner().invoke(main, ["validate", "--drafter", "d", "--verifier", "v", "--out", str(tmp_path / "v.parquet"),
                                  "--dry-run"])
    assert r.exit_code == 2
    assert r.output.strip() == "error: `sectrace validate` needs the trace to read: give --trace PATH"


def test_k_lists_in_breakeven_give_rows_for_each(tmp_path):
    out = tmp_path / "m.parquet"
    r = _run(["breakeven", "--k", "3,5", "--edge-tps", "2", "--edge-tps", "8", "--rtt", "20ms,200ms",
              "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = pl.read_parquet(out)
    assert m.height == 2 * 2 * 2 and sorted(m["k"].unique().to_list()) == [3, 5]
    assert r.stdout.count("policy: k=3 ") == 1 and r.stdout.count("policy: k=5 ") == 1
    j = json.loads(_run(["breakeven", "--k", "3", "--k", "5", "--edge-tps", "2", "--rtt", "50ms", "--json"]).stdout)
    assert [row["k"] for row in j["map"]] == [3, 5] and len(j["policies"]) == 2


def test_k_lists_in_fleet_give_rows_for_each(tmp_path):
    out = tmp_path / "f.parquet"
    r = _run(["fleet", "--devices", "2", "--utterances-per-device", "2", "--k", "3,5", "--rtt", "20ms", "--rtt", "80ms",
              "--json", "--out", str(out)])
    assert r.exit_code == 0, r.output
    runs = json.loads(r.stdout)["runs"]
    assert [(x["k"], x["rtt_s"]) for x in runs] == [(3, 0.02), (3, 0.08), (5, 0.02), (5, 0.08)]
    df = pl.read_parquet(out)
    assert sorted(df["k"].unique().to_list()) == [3, 5] and sorted(df["rtt_s"].unique().to_list()) == [0.02, 0.08]


def test_k_lists_in_frontier_give_rows_for_each():
    r = _run(["gates", "frontier", "--gate", "entropy", "--k", "3,5", "--json"])
    assert r.exit_code == 0, r.output
    front = json.loads(r.stdout)["frontier"]
    assert {row["k"] for row in front} == {3, 5}
    n3 = sum(row["k"] == 3 for row in front)
    assert n3 == len(front) - n3 > 3  # the same gates at each k


def test_a_single_value_option_refuses_a_list_in_one_sentence():
    r = CliRunner().invoke(main, ["simulate", "--edge-tps", "2,4"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.count("\n") == 1 and "--edge-tps takes one value here" in r.output and "breakeven" in r.output


@pytest.mark.parametrize("where", ["group", "leaf"])
def test_quiet_silences_information_not_results(where, tmp_path):
    """gates frontier says on stderr which families the trace has no signal for; -q drops that, not the table."""
    from sectrace.trace import load_trace, write_trace

    real = load_trace(sample_trace_path())  # without its stability column, as it was collected before --signals
    write_trace(tmp_path / "bare", real.manifest, real.utterances, real.nodes.drop("x_stability"), real.timings,
                real.vocab)
    args = ["gates", "frontier", "--trace", str(tmp_path / "bare"), "--gate", "entropy,stability"]
    loud = _run(args)
    quiet = _run(["-q", *args] if where == "group" else [*args, "-q"])
    assert "note: skipping stability" in loud.stderr and quiet.stderr == ""
    assert quiet.stdout == loud.stdout and "entropy:" in quiet.stdout


def test_quiet_keeps_warnings():
    r = _run(["-q", "simulate", str(sample_trace_path()), "--rtt", "50ms"])
    assert r.exit_code == 0 and "is deprecated" in r.stderr


def test_verbose_adds_time_per_step():
    r = _run(["simulate", "--rtt", "50ms", "-v"])
    assert r.exit_code == 0, r.output
    steps = [ln for ln in r.stderr.splitlines() if ln.endswith(" s") and ": " in ln]
    assert any(ln.startswith("loading the trace: ") for ln in steps)
    assert any(ln.startswith("replaying ") for ln in steps)
    assert _run(["simulate", "--rtt", "50ms"]).stderr == ""


def test_quiet_and_verbose_together_is_one_sentence():
    r = CliRunner().invoke(main, ["-q", "simulate", "-v"])
    assert r.exit_code == 2 and r.output.strip() == "error: give -q (quiet) or -v (verbose), not both"


@pytest.mark.parametrize("args", [["gates", "list", "--json"], ["weights", "status", "--json"]])
def test_new_json_outputs_parse(args):
    r = _run(args)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert isinstance(doc, list) and doc


def test_gates_list_json_names_every_gate():
    from sectrace.gates.spec import GATES, SPECIAL

    doc = json.loads(_run(["gates", "list", "--json"]).stdout)
    assert [g["name"] for g in doc] == [*GATES, *SPECIAL]


def test_drafter_runtime_choices_are_the_collectors():
    """cli/collect.py spells the runtimes out so that `--help` does not import models/ (test_layers' HEAVY);
    the collector's list is the one that decides, and the two stay equal."""
    from sectrace.models.llamacpp import RUNTIMES

    opt = next(p for p in LEAVES["collect"].params if p.name == "drafter_runtime")
    assert tuple(opt.type.choices) == RUNTIMES
