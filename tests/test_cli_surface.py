"""The CLI's promises to a newcomer: every leaf command teaches by example, outputs follow one rule,
the core starts without the extras, and a missing extra is one sentence naming the install."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import click
import polars as pl
import pytest
from click.testing import CliRunner

from sectrace.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _leaves(cmd=main, path=()):
    ctx = click.Context(main)
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            yield from _leaves(cmd.get_command(ctx, name), path + (name,))
    else:
        yield path, cmd


LEAVES = list(_leaves())


def test_the_tree_has_every_stage():
    names = {" ".join(p) for p, _ in LEAVES}
    for want in ("simulate", "sweep", "breakeven", "fleet", "trace synth", "trace info", "trace merge", "collect",
                 "gates list", "gates train", "gates eval", "gates frontier", "report", "timeline", "serve",
                 "validate", "data synth", "data describe", "weights setup", "weights status"):
        assert want in names


@pytest.mark.parametrize("path,cmd", LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_every_leaf_has_runnable_examples(path, cmd):
    """An `Examples:` block whose lines are this command, with options the command really has."""
    text = cmd.help or ""
    assert "Examples:" in text, f"`sectrace {' '.join(path)} --help` shows no example"
    block = text.split("Examples:", 1)[1]
    lines = [ln.strip() for ln in block.splitlines() if ln.strip().startswith("sectrace ")]
    mine = [ln for ln in lines if ln.split("#")[0].split()[1:1 + len(path)] == list(path)]
    assert mine, f"no example of `sectrace {' '.join(path)}` in its own help"
    for line in mine:
        args = shlex.split(line.split(" #")[0])[1 + len(path):]
        try:
            cmd.make_context(" ".join(path), list(args), resilient_parsing=False)
        except (click.NoSuchOption, click.BadOptionUsage) as exc:  # an example that no longer parses
            pytest.fail(f"example {line!r}: {exc}")
        except click.BadParameter:
            pass  # a file the example names does not exist here: fine


def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.mark.parametrize("extra_args", [[], ["--json"]])
def test_simulate_out_follows_the_output_rule(tmp_path, extra_args):
    out = tmp_path / "r.parquet"
    out.write_bytes(b"unrelated data")
    r = _run(["simulate", "--rtt", "50ms", "--out", str(out), *extra_args])
    assert r.exit_code == 2 and "already exists" in r.output and "--force" in r.output
    assert out.read_bytes() == b"unrelated data"  # untouched
    r = _run(["simulate", "--rtt", "50ms", "--out", str(out), "--force", *extra_args])
    assert r.exit_code == 0, r.output
    assert pl.read_parquet(out).height > 0


def test_out_format_follows_the_extension(tmp_path):
    r = _run(["simulate", "--out", str(tmp_path / "res.txt")])
    assert r.exit_code == 2 and ".parquet or" in r.output and ".csv" in r.output
    assert not (tmp_path / "res.txt").exists()
    r = _run(["simulate", "--out", str(tmp_path / "res.csv")])
    assert r.exit_code == 0, r.output
    df = pl.read_csv(tmp_path / "res.csv")
    pq = tmp_path / "res.parquet"
    assert _run(["simulate", "--out", str(pq)]).exit_code == 0
    ref = pl.read_parquet(pq)
    assert df.height == ref.height and df["latency_s"].to_list() == pytest.approx(ref["latency_s"].to_list())
    assert df["tokens"][0] == " ".join(map(str, ref["tokens"][0]))  # token lists kept, as text


def test_results_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert _run(["simulate", "--out", str(tmp_path / "r.parquet")]).exit_code == 0
    finally:
        os.umask(old)
    assert (tmp_path / "r.parquet").stat().st_mode & 0o777 == 0o644


def test_traces_honour_the_umask(tmp_path):
    """A written trace is a directory others may read (a shared cluster disk), not mkdtemp's private 0700."""
    old = os.umask(0o027)
    try:
        assert _run(["trace", "synth", str(tmp_path / "t"), "--utterances", "1"]).exit_code == 0
    finally:
        os.umask(old)
    assert (tmp_path / "t").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "t" / "nodes.parquet").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("args,name", [
    (["sweep", str(ROOT / "examples" / "grid.toml")], "s.parquet"),
    (["breakeven", "--edge-tps", "2,4", "--rtt", "50ms"], "b.parquet"),
    (["fleet", "--devices", "2"], "f.parquet"),
    (["gates", "frontier", "--gate", "entropy"], "g.parquet"),
])
def test_every_table_writer_refuses_to_overwrite(tmp_path, args, name):
    out = tmp_path / name
    out.write_text("keep me")
    r = _run([*args, "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output
    assert out.read_text() == "keep me"
    r = _run([*args, "--out", str(tmp_path / "x.json")])
    assert r.exit_code == 2 and "extension" in r.output


def test_outputs_that_are_directories_or_under_files_are_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = _run(["simulate", "--out", str(tmp_path / "afile" / "r.parquet")])
    assert r.exit_code == 2 and "is a file" in r.output
    (tmp_path / "d.parquet").mkdir()
    r = _run(["simulate", "--out", str(tmp_path / "d.parquet"), "--force"])
    assert r.exit_code == 2 and "directory" in r.output


def test_stale_temp_files_are_cleaned_by_the_next_write(tmp_path):
    from sectrace.fsio import write_table

    stale = tmp_path / ".r.parquet.999999999.abcd.tmp"  # a writer that was killed (no such pid)
    stale.write_text("half")
    write_table(pl.DataFrame({"a": [1]}), tmp_path / "r.parquet")
    assert not stale.exists() and pl.read_parquet(tmp_path / "r.parquet")["a"].to_list() == [1]


def test_breakeven_prints_its_legend():
    r = _run(["breakeven", "--edge-tps", "2,8", "--rtt", "20ms,200ms"])
    assert r.exit_code == 0, r.output
    assert "H hybrid fastest" in r.output and "E edge-only fastest" in r.output and "C cloud-only" in r.output


HEAVY = ("torch", "transformers", "fastapi", "matplotlib", "sklearn", "uvicorn", "httpx", "pydantic")


@pytest.mark.parametrize("args", [["--help"], ["simulate", "--rtt", "50ms"], ["trace", "info"],
                                  ["breakeven", "--edge-tps", "2", "--rtt", "50ms"], ["fleet", "--devices", "2"]])
def test_core_commands_import_no_heavy_package(args):
    """What sys.modules holds after the command ran: the extras' packages must not be there."""
    code = ("import sys\nfrom sectrace.cli import main\n"
            f"try:\n    main({args!r}, prog_name='sectrace', standalone_mode=False)\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


@pytest.mark.parametrize("args,extra", [
    (["serve", "--verifier", "x"], "live"),
    (["report", "r.parquet", "--out", "rep"], "report"),
    (["gates", "train", "--out", "g.json"], "gates"),
    (["collect", "m.jsonl", "--drafter", "d", "--verifier", "v", "--out", "t"], "collect"),
])
def test_a_missing_extra_is_one_sentence(monkeypatch, args, extra):
    """Hide one package of the extra: the command stops before any work with the pip line that fixes it."""
    import importlib.util

    from sectrace.cli._common import EXTRAS

    hidden = EXTRAS[extra][0]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == hidden else real(name, *a))
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert f"pip install 'sectrace[{extra}]'" in r.output and "Traceback" not in r.output
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1


def test_an_unexpected_missing_module_names_the_extra(monkeypatch):
    """The fallback for an import inside a command: ModuleNotFoundError of an extra's package → one sentence."""
    from sectrace.cli import _Main

    class Boom(click.Command):
        def invoke(self, ctx):
            raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(_Main, "get_command", lambda self, ctx, name: Boom(name))
    r = CliRunner().invoke(main, ["report"])
    assert r.exit_code == 2 and "pip install 'sectrace[report]'" in r.output
