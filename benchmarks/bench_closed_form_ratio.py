"""The closed form against its floors: `python benchmarks/bench_closed_form_ratio.py [TRACE] [--repeats N]`.

In one process, 80 policies (examples/grid.toml's, baselines left out) × the trace's utterances × 30,000
(device, network) configurations (100 edge speeds × 100 RTTs × 3 uplinks, built as arrays: no object per
configuration), each timed in CPU seconds (time.process_time, the least over the repeats) on one BLAS thread:

- FLOP limit: the FLOPs the product needs (2 · policies · utterances · features · configurations) at the peak
  rate of one large matmul (2000 × 2000) measured here;
- stacked-matmul reference: the features of every policy stacked, one product with the theta grid, every
  utterance's latency under every configuration;
- sectrace's closed form: the same latencies from :func:`sectrace.simulate.latency`, policy by policy;
- sectrace's sweep pricing: :func:`sectrace.simulate.sweep.sweep_policy` per block of configurations without
  the breakdown or intervals (mean latency, TTFT, overlap, speedups over the baselines, p50/p90/p95): priced
  aggregate first, so it holds one block's latencies at a time, never all of them;
- and, for scale, the same with the overhead breakdown (what `sweep --no-ci` prices).

CPU time is reported because the development machine is shared; wall time would measure the neighbours. The
README's figures use the synthetic sample: `sectrace trace synth /tmp/synth --utterances 40 --seed 0`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from sectrace.simulate import Replayer, latency
from sectrace.simulate.aggregate import one_blas_thread
from sectrace.simulate.profiles import base_cost
from sectrace.simulate.sweep import (
    CONFIG_BLOCK,
    Axes,
    baseline_latencies,
    config_blocks,
    load_grid,
    sweep_policy,
    theta_grid,
)
from sectrace.trace import load_trace, sample_trace_path

GRID = Path(__file__).resolve().parent.parent / "examples" / "grid.toml"


def cpu_min(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def axes(n_speed=100, n_rtt=100, ups=(2.5e5, 2.5e6, 1.25e7)) -> Axes:
    speed, rtt, up = (a.ravel() for a in np.meshgrid(np.linspace(0.5, 40, n_speed), np.linspace(0.005, 0.5, n_rtt),
                                                     np.asarray(ups), indexing="ij"))
    n = speed.size
    return Axes(edge_speedup=speed, cloud_speedup=np.ones(n), rtt_s=rtt, up_Bps=up, down_Bps=np.full(n, 1.25e7),
                overhead_bytes=np.full(n, 60.0), extra_s=np.zeros(n))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace", nargs="?", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--end-to-end", action="store_true",
                    help="also time run_sweep without intervals once (2.4 M rows, ~2 GB, tens of CPU seconds)")
    args = ap.parse_args()
    tr = load_trace(args.trace or sample_trace_path())
    rp = Replayer(tr)
    pols, _, cost, _ = load_grid(GRID, 64, trace=tr)
    pols = [p for p in pols if p.k > 0 and p.gate_spec != "never"][:80]
    cost = cost or base_cost(tr, "study")
    reps = [rp.replay(p) for p in pols]
    ax = axes()
    theta = theta_grid(cost, ax)
    n_pol, n_utt, n_feat, n_cfg = len(pols), tr.utterances.height, theta.shape[0], len(ax)
    stacked = np.vstack([r.total for r in reps])
    blocks = config_blocks(n_cfg)
    sub = {b: ax.block(*b) for b in blocks}
    thetas = {b: theta_grid(cost, sub[b]) for b in blocks}
    base = {b: baseline_latencies(rp, 64, thetas[b]) for b in blocks}

    def sweep_pricing(breakdown: bool):
        for p in pols:
            for b in blocks:
                sweep_policy(rp, p, cost, sub[b], breakdown=breakdown, baselines=base[b], ci=False, theta=thetas[b])

    sweep_pricing(True)  # warm: replays' overhead and counts are cached on them, as in a sweep
    with one_blas_thread():
        a = np.random.default_rng(0).standard_normal((2000, 2000))
        t_peak = cpu_min(lambda: a @ a, args.repeats)
        peak = 2 * 2000 ** 3 / t_peak
        flops = 2 * n_pol * n_utt * n_feat * n_cfg
        t_floor = flops / peak
        t_ref = cpu_min(lambda: stacked @ theta, args.repeats)
        t_closed = cpu_min(lambda: [latency(r.total, theta) for r in reps], args.repeats)
    t_sweep = cpu_min(lambda: sweep_pricing(False), args.repeats)
    t_sweep_bd = cpu_min(lambda: sweep_pricing(True), args.repeats)

    print(f"{n_pol} policies × {n_utt} utterances × {n_cfg:,} configurations × {n_feat} features; one BLAS thread; "
          f"CPU seconds, least of {args.repeats} (the machine may be shared: CPU time, not wall time)")
    print(f"peak matmul (2000³): {peak / 1e9:.1f} GFLOP/s → FLOP limit for {flops / 1e9:.2f} GFLOP: {t_floor:.3f} s")
    print(f"stacked-matmul reference ({stacked.shape[0]} × {n_feat} @ {n_feat} × {n_cfg}): {t_ref:.3f} s")
    for name, t in (("sectrace closed form (every latency, simulate.latency per policy)", t_closed),
                    (f"sectrace sweep pricing (means, speedups, percentiles; blocks of {CONFIG_BLOCK})", t_sweep),
                    ("  the same with the overhead breakdown (sweep --no-ci)", t_sweep_bd)):
        print(f"{name}: {t:.3f} s = {t / t_ref:.2f}× the reference, {t / t_floor:.2f}× the FLOP limit")
    if args.end_to_end:
        from sectrace.simulate.sweep import run_sweep

        t0 = time.process_time()
        df = run_sweep(rp, pols, cost, ax, ci=False, provenance={})
        print(f"run_sweep end to end without intervals ({df.height:,} rows, the table included): "
              f"{time.process_time() - t0:.1f} s")


if __name__ == "__main__":
    main()
