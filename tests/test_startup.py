"""The CLI starts light: listing the commands, or asking one for its help, imports none of the scientific
stack, and a command imports only what it uses (the local sweep no dask). benchmarks/bench_startup.py
measures what this buys in CPU seconds."""

from __future__ import annotations

import subprocess
import sys

from sectrace.cli import COMMANDS

SCIENTIFIC = ("numpy", "polars", "scipy", "pyarrow", "tqdm", "joblib", "simpy", "dask", "distributed")


def _heavy_after(runs: list[list[str]], heavy=SCIENTIFIC) -> dict[str, list[str]]:
    """In one fresh interpreter, each run in turn: which of ``heavy`` it added to sys.modules."""
    code = ("import sys\nfrom sectrace.cli import main\nseen = set(sys.modules)\n"
            f"for args in {runs!r}:\n"
            "    try:\n        main(args, prog_name='sectrace', standalone_mode=False)\n"
            "    except SystemExit as e:\n        assert not e.code, (args, e.code)\n"
            f"    new = sorted({{m.split('.')[0] for m in set(sys.modules) - seen}} & {set(heavy)!r})\n"
            "    print(' '.join(args), '|', ' '.join(new))\n    seen = set(sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    rows = [ln.split(" | ") for ln in out.splitlines() if " | " in ln]
    return {cmd: new.split() for cmd, new in rows}


def test_help_imports_no_scientific_package():
    runs = [["--help"]] + [[name, "--help"] for name in COMMANDS]
    found = _heavy_after(runs)
    assert len(found) == len(runs)
    assert {cmd: new for cmd, new in found.items() if new} == {}


def test_the_check_sees_an_import():
    """The check itself can fail: a run that loads polars is reported."""
    found = _heavy_after([["--help"], ["trace", "info"]])
    assert "polars" in found["trace info"] and found["--help"] == []


def test_the_local_sweep_imports_no_dask(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text("[policy]\nk = [3]\n[network]\nrtt = [\"50ms\"]\n")
    found = _heavy_after([["sweep", str(grid), "--out", str(tmp_path / "s.parquet")]])
    (new,) = found.values()
    assert "polars" in new and "dask" not in new and "distributed" not in new
