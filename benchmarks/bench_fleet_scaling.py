"""How the SimPy fleet engine scales with devices and servers (plain script; prints figures).

    PYTHONPATH=src python benchmarks/bench_fleet_scaling.py [TRACE] [--devices 1000,2000,5000,10000]

Each run is D devices and D/50 servers (200 at 10,000 devices), every device playing a few utterances of
one always-escalate policy back to back, batching on, jitter and loss off. Prints the CPU time, simulated
escalations per CPU second, and the scaling exponent b of time ∝ devices^b fitted over the runs (1 is
linear; the server scan before issue 18 gave about 1.6).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sectrace.gates import parse_gate
from sectrace.protocol import Accept, Policy
from sectrace.simulate import Network, Replayer, fit_costs
from sectrace.simulate.fleet import Fleet, plans, simulate_fleet
from sectrace.trace import load_trace, sample_trace_path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace", nargs="?", help="trace directory (default: the bundled sample)")
    ap.add_argument("--devices", default="1000,2000,5000,10000")
    ap.add_argument("--per-device", type=int, default=3, help="utterances each device plays")
    args = ap.parse_args()
    tr = load_trace(args.trace or sample_trace_path())
    rp = Replayer(tr)
    pol = Policy(k=3, gate=parse_gate("always"), gate_spec="always", accept=Accept("rank", 20), max_new_tokens=64)
    pl_ = plans(rp, rp.replay(pol))
    cost = fit_costs(tr.timings)
    net = Network(rtt_s=0.05)
    simulate_fleet(pl_, cost, net, Fleet(devices=2))  # warm-up: imports
    sizes, secs = [], []
    for d in (int(x) for x in args.devices.split(",")):
        fl = Fleet(devices=d, servers=max(1, d // 50), max_batch=8, utterances_per_device=args.per_device, seed=0)
        t0 = time.process_time()
        out = simulate_fleet(pl_, cost, net, fl)
        dt = time.process_time() - t0
        esc = int(out["cloud_calls"].sum())
        sizes.append(d)
        secs.append(dt)
        print(f"{d:>6} devices x {fl.servers:>3} servers: {dt:7.2f} CPU-s, {esc:,} escalations "
              f"({esc / dt:,.0f}/s), p95 queue {np.percentile(out['queue_s'].to_numpy(), 95):.3f} s")
    if len(sizes) > 1:
        b = np.polyfit(np.log(sizes), np.log(secs), 1)[0]
        print(f"scaling exponent (time ∝ devices^b): b = {b:.2f}")


if __name__ == "__main__":
    main()
