"""The break-even map's paired intervals: the hybrid against edge-only on the same resampled utterances."""

from __future__ import annotations

import numpy as np
import polars as pl
from click.testing import CliRunner

from sectrace.cli import main
from sectrace.gates import parse_policy
from sectrace.protocol import drafter_only
from sectrace.simulate import Network, Replayer
from sectrace.simulate.metrics import bootstrap_weights
from sectrace.simulate.profiles import base_cost
from sectrace.simulate.sweep import SWEEP_RESAMPLES, Axes, breakeven, theta_grid
from sectrace.trace import load_trace, sample_trace_path


def test_paired_interval_is_the_bootstrap_of_the_ratio_of_sums():
    tr = load_trace(sample_trace_path())
    rp = Replayer(tr)
    pol = parse_policy("k=5 gate=entropy:2.5 accept=rank:20 features", 64)
    cost = base_cost(tr, "study")
    m = breakeven(rp, pol, cost, Network(), [1.0, 32.0], [0.01])
    # by hand: per-utterance latencies at each cell, Σ edge / Σ hybrid over resamples of the utterances
    base = 1.0 / cost.edge_step_a
    ax = Axes(edge_speedup=np.array([1.0, 32.0]) / base, cloud_speedup=np.ones(2), rtt_s=np.full(2, 0.01),
              up_Bps=np.full(2, Network().up_Bps), down_Bps=np.full(2, Network().down_Bps),
              overhead_bytes=np.full(2, float(Network().overhead_bytes)), extra_s=np.full(2, Network().expected_extra_s))
    theta = theta_grid(cost, ax)
    hyb, edge = rp.replay(pol), rp.replay(drafter_only(64))
    assert hyb.covered.all() and edge.covered.all()
    h, e = hyb.total @ theta, edge.total @ theta
    point, lo, hi = bootstrap_weights(len(h), lambda w: (w @ e) / (w @ h), n_resamples=SWEEP_RESAMPLES)
    np.testing.assert_allclose(m["paired_speedup_vs_edge"].to_numpy(), point, rtol=1e-12)
    np.testing.assert_allclose(m["paired_speedup_vs_edge_lo"].to_numpy(), lo, rtol=1e-9)
    np.testing.assert_allclose(m["paired_speedup_vs_edge_hi"].to_numpy(), hi, rtol=1e-9)
    assert (m["paired_speedup_vs_edge_lo"] <= m["paired_speedup_vs_edge"]).all()
    assert (m["paired_speedup_vs_edge"] <= m["paired_speedup_vs_edge_hi"]).all()
    # all utterances covered: the paired ratio is the ratio of the means
    np.testing.assert_allclose(m["paired_speedup_vs_edge"].to_numpy(), m["speedup_vs_edge"].to_numpy(), rtol=1e-12)
    assert m["beats_edge_sure"].to_list() == [bool(lo[0] > 1), bool(lo[1] > 1)]
    assert m.filter(pl.col("edge_tps") == 32.0)["loses_to_edge_sure"].item()  # a fast edge: clearly better alone


def test_the_printed_map_marks_ties_within_noise():
    r = CliRunner().invoke(main, ["breakeven", "--costs", "study", "--edge-tps", "1,2,32", "--rtt", "10ms,100ms"])
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line.split()[1:] for line in r.output.splitlines() if line.strip()[:2] in ("1 ", "2 ", "32")}
    assert rows["32"] == ["E", "E"]  # edge-only wins beyond noise
    assert any(c.endswith("~") for c in rows["2"])  # a slow edge: within noise
    assert "~ hybrid vs edge-only within resampling noise" in r.output
