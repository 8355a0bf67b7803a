#!/usr/bin/env python3
"""Mutation testing of sectrace's core modules: how many injected bugs do the fast tests catch?

A line-coverage number says which lines ran; a mutation score says which *wrong* lines the tests
would notice. mutmut rewrites one operator/constant/call at a time and reruns the tests that
reach it; a mutant that no test fails on ("survived") is either equivalent to the original or a
missing test. Results and the survivor list are published in docs/mutation.md.

Install (once):   pip install -e ".[test,mutation]"   # mutmut 3.8.1
Run:              python scripts/mutation.py                 # every module, most important first
                  python scripts/mutation.py engine policy   # only these
                  python scripts/mutation.py timing --rerun-survivors   # after adding tests for its survivors
                  python scripts/mutation.py --list           # the modules and their tests

Each module runs in its own scratch copy (.mutation/<module>/: src/, tests/ and pyproject.toml
with a [tool.mutmut] section that mutates only that file), so the repository is never touched and
a rerun reuses mutmut's cache. It is slow (minutes per module) and is not part of the default CI
run. Run it niced: `nice -n 19 python scripts/mutation.py -j 2`.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: module key -> (file to mutate, mutmut name glob restricting which functions count, fast tests).
#: Order = priority: the protocol first, then the timing model and the built-in gates.
MODULES: dict[str, tuple[str, str, list[str]]] = {
    # Not the Leviathan test: it checks an expected rate over many random utterances (a minute per surviving
    # mutant); the hand-computed schedules in test_oracle_protocol.py pin what it would catch.
    "engine": ("src/sectrace/protocol/engine.py", "sectrace.protocol.engine.*",
               ["tests/test_protocol.py", "tests/test_oracle_protocol.py", "tests/test_latency_reference.py",
                "-k", "not leviathan"]),
    # policy.py is plain data: its own unit tests; the statistical (Leviathan) and Hypothesis tests and the trace
    # replays reach Policy.__post_init__ too but take a minute per surviving mutant and pin nothing of policy.py.
    "policy": ("src/sectrace/protocol/policy.py", "sectrace.protocol.policy.*",
               ["tests/test_protocol.py", "tests/test_oracle_protocol.py", "-k",
                "not leviathan and not replay_from_trie and not run_invariants and not lossless_replay"]),
    "timing": ("src/sectrace/simulate/timing.py", "sectrace.simulate.timing.*",
               ["tests/test_timing.py", "tests/test_cost_invariants.py", "tests/test_latency_reference.py"]),
    # The hand-block tests only: the rest of test_gates_builtin.py replays traces through parse_gate/oracle.
    "builtin": ("src/sectrace/gates/builtin.py", "sectrace.gates.builtin.*",
                [f"tests/test_gates_builtin.py::{t}" for t in (
                    "test_signal_gates_fire_and_fail_clearly", "test_combinations",
                    "test_block_gates_read_the_right_token_of_the_block", "test_random_gate_rate_and_determinism",
                    "test_signal_gates_skip_unknown_values", "test_signal_gates_name_the_missing_column")]
                + ["tests/test_oracle_protocol.py::test_gates_at_their_threshold"]),
    "costs": ("src/sectrace/simulate/costs.py", "sectrace.simulate.costs.*",
              ["tests/test_cost_tables.py", "tests/test_cost_invariants.py"]),
    # Only train_gate (its cross-validation split, calibration and document), not the model-file parser; only the
    # tests that call train_gate (the CLI and gate round-trip tests reach it through a slow fixture).
    "learned": ("src/sectrace/gates/learned.py", "sectrace.gates.learned.x_train_gate__mutmut_*",
                ["tests/test_gates_learned.py", "-k", "train_gate or train_records or impact_label"]),
    # Only score_captions (which captions are scored, and how), not the Java/METEOR plumbing. Its tests with the
    # two jars take minutes each (a METEOR JVM loading its English paraphrase tables, the PTB tokenizer, and
    # pycocoevalcap's own wrappers for the reference values); test_quality_scoring.py pins the same logic with
    # stand-ins of the jars' contract against pycocoevalcap's Python scorers in about a second. One test runs the
    # real METEOR jar (the Chinese one: -l other starts in a second). The English jar tests are left out; the
    # survivors are checked against them by hand (docs/mutation.md).
    "quality": ("src/sectrace/reports/quality.py", "sectrace.reports.quality.x_score_captions__mutmut_*",
                ["tests/test_quality_scoring.py"]
                + [f"tests/test_quality.py::{t}" for t in (
                    "test_chinese_captions_score_without_ptb", "test_no_references_is_a_user_error",
                    "test_results_without_captions_are_refused_with_one_sentence")]),
}

#: Modules whose fork server must not collect the tests first: test_gates_learned.py builds the synthetic sample
#: when imported (module-level SAMPLE), which starts polars' thread pool in the fork server, and every forked
#: worker then hangs in polars (all read as timeouts). Their workers import everything themselves instead.
NO_WARMUP = {"learned"}

STATUSES = ("killed", "survived", "timeout", "no tests", "suspicious", "skipped", "segfault", "not checked",
            "caught by type check")


def _toml_list(xs) -> str:
    return "[" + ", ".join(f'"{x}"' for x in xs) + "]"


def prepare(key: str, scratch: Path, timeout_multiplier: float = 2.0, timeout_constant: float = 30.0) -> Path:
    """Copy src/, tests/ and a pyproject.toml that mutates only this module into scratch/key."""
    src, _, tests = MODULES[key]
    work = scratch / key
    work.mkdir(parents=True, exist_ok=True)
    for d in ("src", "tests"):
        # Refresh the copy only if the source changed, so mutmut's cache stays valid across reruns.
        shutil.copytree(ROOT / d, work / d, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject += ("\n[tool.mutmut]\n"
                  f'source_paths = ["src"]\n'
                  f"only_mutate = {_toml_list([src])}\n"
                  f"pytest_add_cli_args = {_toml_list(['-p', 'no:cacheprovider', '-q', '-x'])}\n"
                  f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
                  # mutmut times a mutant out at multiplier x (the tests' own time + constant). The tests'
                  # time excludes their session fixtures (synthetic traces, seconds each), which a forked
                  # worker rebuilds, so the constant must cover them or sound mutants read as timeouts.
                  # That product is a wall-clock limit (twice it a CPU-time limit): on a loaded machine raise
                  # both (--timeout-multiplier/--timeout-constant) or sound mutants read as timeouts.
                  f"timeout_multiplier = {timeout_multiplier}\ntimeout_constant = {timeout_constant}\n"
                  # Forking workers straight from the process that ran the clean tests deadlocks polars
                  # (its thread pool does not survive fork): every mutant reached by a polars test
                  # "timed out". A fork server that has only collected the tests is fork-safe.
                  'process_isolation = "forkserver"\n'
                  f'forkserver_warmup = "{"none" if key in NO_WARMUP else "collect"}"\n')
    (work / "pyproject.toml").write_text(pyproject)
    return work


def run(key: str, work: Path, jobs: int, report_only: bool = False, rerun_survivors: bool = False
        ) -> dict[str, str]:
    _, glob, _ = MODULES[key]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # mutmut puts its mutated copy of src/ first on sys.path itself
    mutmut = shutil.which("mutmut") or str(Path(sys.executable).with_name("mutmut"))
    if rerun_survivors and (work / "mutants").is_dir():
        # mutmut reruns every mutant a name glob matches; after new tests only the survivors need another run.
        names = [n for n, s in _results(mutmut, work, env, glob).items() if s not in ("killed", "skipped")]
        if names:
            subprocess.run(["nice", "-n", "19", mutmut, "run", "--max-children", str(jobs), *names], cwd=work,
                           env=env, check=False)
    elif not report_only:
        subprocess.run(["nice", "-n", "19", mutmut, "run", "--max-children", str(jobs), glob], cwd=work, env=env, check=False)
    return _results(mutmut, work, env, glob)


def _results(mutmut: str, work: Path, env: dict, glob: str) -> dict[str, str]:
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True,
                         text=True, check=False).stdout
    status = {}
    for line in out.splitlines():
        m = re.match(r"\s+(\S+): (.+)$", line)
        if m and _matches(m.group(1), glob):
            status[m.group(1)] = m.group(2).strip()
    return status


def _matches(name: str, glob: str) -> bool:
    import fnmatch
    return fnmatch.fnmatch(name, glob)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("modules", nargs="*", help=f"subset of: {', '.join(MODULES)} (default: all)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="parallel mutant workers (default 2)")
    ap.add_argument("--scratch", type=Path, default=ROOT / ".mutation", help="scratch dir (default .mutation/)")
    ap.add_argument("--survivors", type=Path, default=ROOT / ".mutation" / "survivors.txt",
                    help="where to write the surviving mutants' names and diffs")
    ap.add_argument("--report-only", action="store_true",
                    help="only tabulate what earlier (possibly interrupted) runs left in the scratch dir")
    ap.add_argument("--rerun-survivors", action="store_true",
                    help="rerun only the mutants an earlier run left alive (after adding tests for them)")
    ap.add_argument("--timeout-multiplier", type=float, default=2.0,
                    help="mutmut's timeout: multiplier x (the tests' time + constant); default 2")
    ap.add_argument("--timeout-constant", type=float, default=30.0, help="seconds added first (default 30)")
    ap.add_argument("--list", action="store_true", help="print the modules and their tests, run nothing")
    a = ap.parse_args(argv)
    if a.list:
        for k, (src, glob, tests) in MODULES.items():
            print(f"{k:8} {src}  [{glob}]  <- {' '.join(tests)}")
        return 0
    bad = [m for m in a.modules if m not in MODULES]
    if bad:
        ap.error(f"unknown module(s) {bad}; choose from {list(MODULES)}")
    keys = a.modules or list(MODULES)
    rows, survivors = [], []
    for key in keys:
        work = a.scratch / key if a.report_only else prepare(key, a.scratch, a.timeout_multiplier, a.timeout_constant)
        if a.report_only and not (work / "mutants").is_dir():
            print(f"{key}: not run")
            continue
        status = run(key, work, a.jobs, a.report_only, a.rerun_survivors)
        counts = {s: sum(v == s for v in status.values()) for s in STATUSES}
        rows.append((key, counts))
        mutmut = shutil.which("mutmut") or str(Path(sys.executable).with_name("mutmut"))
        for name, s in sorted(status.items()):
            if s not in ("killed", "caught by type check", "not checked", "skipped"):
                diff = subprocess.run([mutmut, "show", name], cwd=work, capture_output=True, text=True,
                                      check=False).stdout
                survivors.append(f"## {key} {name}: {s}\n{diff}\n")
    print(f"\n{'module':10}{'killed':>8}{'survived':>10}{'timeout':>9}{'other':>7}{'score':>8}")
    tk = tt = 0
    for key, c in rows:
        other = sum(c.values()) - c["killed"] - c["survived"] - c["timeout"]
        # A timeout counts as detected (the mutant made the tests hang), as mutmut does.
        det, tot = c["killed"] + c["timeout"], sum(c.values()) - c["skipped"] - c["not checked"]
        tk, tt = tk + det, tt + tot
        print(f"{key:10}{c['killed']:8}{c['survived']:10}{c['timeout']:9}{other:7}"
              f"{(100 * det / tot if tot else float('nan')):7.1f}%")
    print(f"{'total':10}{'':34}{(100 * tk / tt if tt else float('nan')):7.1f}%")
    a.survivors.parent.mkdir(parents=True, exist_ok=True)
    a.survivors.write_text("".join(survivors))
    print(f"survivors ({len(survivors)}): {a.survivors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
