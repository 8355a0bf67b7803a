"""Speed of the two engines on the bundled sample trace (plain script; prints figures).

    PYTHONPATH=src python benchmarks/bench_simulator.py [--configs 10000] [--fleet-configs 20]

Closed form: policies × 10,000 configurations (edge speedup × cloud speedup × RTT × uplink), priced
by sweep.run_sweep with the overhead breakdown and overlap; reported as utterance-replays per
second (policies × configurations × utterances / wall time), with and without the one-off trie
replays. SimPy: the fleet engine on a slice of the same configurations (10 devices, 2 servers,
jitter and loss on), reported as simulated escalations per second.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from sectrace.trace import sample_trace_path
from sectrace.gates import parse_gate
from sectrace.protocol import Accept, Policy, cloud_only, drafter_only
from sectrace.simulate import Network, Replayer, fit_costs
from sectrace.simulate.fleet import Fleet, plans, simulate_fleet
from sectrace.simulate.sweep import Axes, run_sweep
from sectrace.trace import load_trace


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace", nargs="?", help="trace directory (default: the bundled sample); the README's figures "
                    "use `sectrace trace synth /tmp/synth --utterances 40 --seed 0`")
    ap.add_argument("--configs", type=int, default=10_000)
    ap.add_argument("--fleet-configs", type=int, default=20)
    args = ap.parse_args()
    tr = load_trace(args.trace or sample_trace_path())
    cost = fit_costs(tr.timings)
    policies = [drafter_only(64), cloud_only(64)] + [
        Policy(k=k, gate=parse_gate(g), gate_spec=g, accept=Accept.parse(a), max_new_tokens=64)
        for k in (2, 5) for g in ("always", "entropy:2.5") for a in ("top1", "rank:20")]
    n = args.configs
    rng = np.random.default_rng(0)
    ax = Axes(edge_speedup=rng.uniform(0.25, 32, n), cloud_speedup=rng.uniform(0.5, 2, n),
              rtt_s=rng.uniform(0.001, 0.6, n), up_Bps=rng.uniform(1e5, 1e8, n), down_Bps=np.full(n, 50e6 / 8),
              overhead_bytes=np.full(n, 100.0), extra_s=np.zeros(n))
    n_utt = tr.utterances.height
    t0 = time.perf_counter()
    rp = Replayer(tr)
    for p in policies:
        rp.replay(p)
    t1 = time.perf_counter()
    df = run_sweep(rp, policies, cost, ax, ci=False)  # the pricing engine; bootstrap intervals cost ~0.5 ms a row
    t2 = time.perf_counter()
    replays = len(policies) * n * n_utt
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"closed form: {len(policies)} policies x {n:,} configurations x {n_utt} utterances = {replays:,} "
          f"utterance-replays ({df.height:,} result rows)")
    print(f"  trie replays (once per policy): {t1 - t0:.2f} s")
    print(f"  pricing all configurations:     {t2 - t1:.2f} s -> {replays / (t2 - t1):,.0f} utterance-replays/s")
    print(f"  end to end:                     {t2 - t0:.2f} s -> {replays / (t2 - t0):,.0f} utterance-replays/s")

    pol = Policy(k=3, gate=parse_gate("always"), gate_spec="always", max_new_tokens=64)
    pl_ = plans(rp, rp.replay(pol))
    simulate_fleet(pl_, cost, Network(jitter="expon(scale=0.002)", loss=0.01), Fleet(devices=1))  # warm-up: imports
    esc = 0
    t3 = time.perf_counter()
    for i in range(args.fleet_configs):
        c = cost.scaled(ax.edge_speedup[i], ax.cloud_speedup[i])
        net = Network(rtt_s=ax.rtt_s[i], up_Bps=ax.up_Bps[i], jitter="expon(scale=0.002)", loss=0.01)
        out = simulate_fleet(pl_, c, net, Fleet(devices=10, servers=2, max_batch=8, seed=i))
        esc += int(out["cloud_calls"].sum())
    t4 = time.perf_counter()
    print(f"SimPy fleet: {args.fleet_configs} configurations x 10 devices x {n_utt} utterances, policy {pol.label}: "
          f"{esc:,} escalations in {t4 - t3:.2f} s -> {esc / (t4 - t3):,.0f} escalations/s")


if __name__ == "__main__":
    main()
