"""CPU seconds and peak memory of `trace info` and `simulate` as a trace grows (plain script; prints a table).

    PYTHONPATH=src python benchmarks/bench_trie_scale.py                 # makes 400 / 4,000 / 10,000 in a temp dir
    PYTHONPATH=src python benchmarks/bench_trie_scale.py T1 T2 ...       # or measure these trace directories
    PYTHONPATH=src python benchmarks/bench_trie_scale.py --phases T      # where simulate's CPU goes, in process

Each command runs as its own process; its user+system CPU seconds and peak RSS come from
``os.wait4`` (that process alone), so the figures hold on a busy machine where wall time does not.
``simulate`` prices 11 policies × 3 RTTs: edge-only and cloud-only (the baselines every simulate
adds) plus k ∈ {1, 3, 5} × gates {always, entropy:2.5, margin:0.3} at rank:20, all explored by
the synthetic trace's default exploration, at --rtt 20ms,50ms,100ms. Without traces, it writes
`sectrace trace synth --utterances 400 --seed 0` and repeats its utterances under new ids up to
4,000 and 10,000 (benchmarks/replicate_trace.py): the node structure per utterance is what
loading and replay pay for.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIMULATE = ["--k", "1,3,5", "--gate", "always", "--gate", "entropy:2.5", "--gate", "margin:0.3",
            "--rtt", "20ms,50ms,100ms"]


def measure(cmd: list[str]) -> tuple[float, float]:
    """(CPU seconds, peak RSS in bytes) of one child process."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err.strip()[-400:]}")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def make_traces(root: Path) -> list[Path]:
    base = root / "synth-400"
    here = Path(__file__).resolve().parent
    subprocess.run([sys.executable, "-m", "sectrace", "trace", "synth", str(base), "--utterances", "400",
                    "--seed", "0", "-q"], check=True)
    out = [base]
    for n in (4000, 10000):
        dst = root / f"synth-{n}"
        subprocess.run([sys.executable, str(here / "replicate_trace.py"), str(base), str(dst), "--utterances", str(n)],
                       check=True, stdout=subprocess.DEVNULL)
        out.append(dst)
    return out


def phases(path: Path):
    """Where simulate's CPU goes: load, replayer, replays, results rows, bootstrap summary."""
    import resource

    from sectrace.gates import parse_gate
    from sectrace.protocol import Accept, Policy
    from sectrace.simulate import Network, Replayer, baselines, simulate, summarise
    from sectrace.simulate.profiles import base_cost
    from sectrace.trace import load_trace

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    marks = [("start", cpu())]
    tr = load_trace(path)
    marks.append(("load_trace", cpu()))
    pols = list(baselines(64)) + [Policy(k=k, gate=parse_gate(g), gate_spec=g, accept=Accept.parse("rank:20"),
                                         max_new_tokens=64) for k in (1, 3, 5)
                                  for g in ("always", "entropy:2.5", "margin:0.3")]
    rp = Replayer(tr)
    marks.append(("Replayer(trace)", cpu()))
    for p in pols:
        rp.replay(p)
    marks.append((f"replay {len(pols)} policies", cpu()))
    cost = base_cost(tr, "fit", None, None)
    res = simulate(tr, pols, [(cost, Network(rtt_s=r)) for r in (0.02, 0.05, 0.1)], replayer=rp)
    marks.append(("results rows (simulate)", cpu()))
    summarise(res)
    marks.append(("summarise (bootstrap)", cpu()))
    print(f"{path} ({tr.utterances.height:,} utterances, {tr.trie().n:,} nodes), CPU-s per phase:")
    for (_, a), (name, b) in itertools.pairwise(marks):
        print(f"  {name:<26}{b - a:7.2f}")
    print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("traces", nargs="*", type=Path)
    ap.add_argument("--phases", action="store_true", help="time simulate's phases in this process instead")
    args = ap.parse_args()
    if args.phases:
        for t in args.traces:
            phases(t)
        return
    tmp = None
    traces = args.traces
    if not traces:
        tmp = tempfile.TemporaryDirectory(prefix="sectrace-scale-")
        traces = make_traces(Path(tmp.name))
    import polars as pl

    sectrace = [sys.executable, "-m", "sectrace"]
    rows = []
    for t in traces:
        t0 = time.perf_counter()
        info = measure(sectrace + ["trace", "info", str(t)])
        sim = measure(sectrace + ["simulate", "--trace", str(t), *SIMULATE])
        n = pl.read_parquet(t / "utterances.parquet", columns=["utt_id"]).height
        rows.append((n, disk_bytes(t), info, sim, time.perf_counter() - t0))
    print(f"{'utterances':>10} {'disk':>9} {'info CPU-s':>11} {'info RSS':>9} {'×disk':>6} "
          f"{'simulate CPU-s':>15} {'sim RSS':>9} {'×disk':>6}")
    for n, disk, (ic, ir), (sc, sr), _ in rows:
        print(f"{n:>10,} {disk / 1e6:>7.0f}MB {ic:>11.1f} {ir / 1e6:>7.0f}MB {ir / disk:>6.1f} "
              f"{sc:>15.1f} {sr / 1e6:>7.0f}MB {sr / disk:>6.1f}")
    print(f"simulate: 11 policies x 3 RTTs ({' '.join(SIMULATE)}); CPU-s = user + system of that process")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
