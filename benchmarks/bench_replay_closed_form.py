"""How fast the backbone replays and prices: `python benchmarks/bench_replay_closed_form.py [TRACE]`.

The README's figures use the synthetic sample: `sectrace trace synth /tmp/synth --utterances 40 --seed 0`,
then pass /tmp/synth (without TRACE the bundled sample is used). Prints (1) trace load time, (2) replay time per policy over the bundled sample trace, and
(3) closed-form latency for tens of thousands of (device, network) configurations at once.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from sectrace.gates import parse_gate
from sectrace.protocol import Accept, Policy
from sectrace.simulate import CostModel, Network, Replayer, latency
from sectrace.simulate.aggregate import one_blas_thread
from sectrace.simulate.sweep import Axes, theta_grid
from sectrace.trace import load_trace, sample_trace_path


def main():
    t0 = time.perf_counter()
    tr = load_trace(sys.argv[1] if len(sys.argv) > 1 else sample_trace_path())
    rp = Replayer(tr)
    t1 = time.perf_counter()
    print(f"load + index sample trace ({tr.utterances.height} utterances, {tr.nodes.height} nodes): {t1 - t0:.3f} s")

    policies = [Policy(k=k, gate=parse_gate(g), gate_spec=g, accept=Accept.parse(a), privacy=p, max_new_tokens=64)
                for k in (1, 3, 5, 8) for g in ("always", "entropy:1.5", "entropy:2.5", "margin:0.1", "random:0.5")
                for a in ("top1", "rank:20") for p in ("features", "token-only")]
    t0 = time.perf_counter()
    reps = [rp.replay(p) for p in policies]
    t1 = time.perf_counter()
    print(f"replay: {len(policies)} policies in {t1 - t0:.3f} s = {1000 * (t1 - t0) / len(policies):.2f} ms/policy "
          f"({sum(int(r.covered.sum()) for r in reps)} covered utterance runs)")

    rtts = np.linspace(0.005, 0.5, 100)
    speeds = np.linspace(0.5, 40, 100)
    ups = (2.5e5, 2.5e6, 1.25e7)
    # a grid as arrays (what sweeps do), not one CostModel and Network per configuration; an edge speed scales the
    # whole edge, as --edge-speedup does
    speed, rtt, up = (a.ravel() for a in np.meshgrid(speeds, rtts, np.asarray(ups), indexing="ij"))
    net = Network()
    n_cfg = speed.size
    ax = Axes(edge_speedup=CostModel().edge_step_a * speed, cloud_speedup=np.ones(n_cfg), rtt_s=rtt, up_Bps=up,
              down_Bps=np.full(n_cfg, net.down_Bps), overhead_bytes=np.full(n_cfg, float(net.overhead_bytes)),
              extra_s=np.full(n_cfg, net.expected_extra_s))
    t0 = time.perf_counter()
    theta = theta_grid(CostModel(), ax)
    t1 = time.perf_counter()
    with one_blas_thread():
        lat = [latency(r.total, theta) for r in reps]
    t2 = time.perf_counter()
    n = n_cfg * len(reps)
    print(f"closed form: {n_cfg} configurations × {len(reps)} policies × {tr.utterances.height} utterances "
          f"= {n * tr.utterances.height:,} latencies in {t2 - t1:.3f} s (+ {t1 - t0:.3f} s building cost vectors); "
          f"{n / (t2 - t1):,.0f} policy-configurations/s")
    assert all(np.isfinite(x[r.covered]).all() for x, r in zip(lat, reps))


if __name__ == "__main__":
    main()
