"""Sweeps and break-even maps agree with the per-configuration closed form."""

import numpy as np
import polars as pl
import pytest
from conftest import synthetic_replayer
from conftest import synthetic_sample as sample_trace_path

from sectrace.errors import UserError
from sectrace.gates import parse_gate
from sectrace.protocol import Policy
from sectrace.simulate import CostModel, Network, simulate, summarise
from sectrace.simulate.sweep import breakeven, check_theta_grid, load_grid, product_axes, run_sweep


@pytest.fixture(scope="module")
def rp():
    return synthetic_replayer()


NETS = [Network(rtt_s=0.01, name="a"), Network(rtt_s=0.2, up_Bps=1e5, down_Bps=3e5, overhead_bytes=40, name="b",
                                                jitter="expon(scale=0.003)", loss=0.02)]


def test_theta_grid_equals_cost_vector():
    ax = product_axes(NETS[:1], [0.5, 1, 4], [1, 2])
    assert check_theta_grid(CostModel(), NETS[:1], ax) < 1e-15


def test_sweep_equals_simulate(rp):
    pol = Policy(k=4, gate=parse_gate("entropy:2.5"), gate_spec="entropy:2.5", bonus=False)
    cost = CostModel()
    ax = product_axes(NETS, [1.0, 3.0], [1.0])
    sw = run_sweep(rp, [pol], cost, ax)
    for i in range(len(ax)):
        c = cost.scaled(ax.edge_speedup[i], ax.cloud_speedup[i])
        net = NETS[0] if ax.labels["network"][i] == "a" else NETS[1]
        ref = summarise(simulate(rp.trace, [pol], [(c, net)], replayer=rp)).row(0, named=True)
        row = sw.row(i, named=True)
        assert row["latency_s"] == pytest.approx(ref["latency_s"], abs=1e-9)
        assert row["latency_overlap_s"] == pytest.approx(ref["latency_overlap_s"], abs=1e-9)
        assert row["cloud_calls"] == pytest.approx(ref["cloud_calls"])
    parts = [c for c in sw.columns if c.startswith("t_") and c.endswith("_s")]
    assert sw.select((pl.sum_horizontal(parts) - pl.col("latency_s")).abs().max()).item() < 1e-9
    assert ((sw["draft_acceptance_rate"] > 0) & (sw["draft_acceptance_rate"] <= 1)).all()
    assert ((sw["system_efficiency"] > 0) & (sw["system_efficiency"] <= 1)).all()


def test_breakeven_map(rp):
    pol = Policy(k=5, gate=parse_gate("always"), gate_spec="always")
    cost = CostModel()
    m = breakeven(rp, pol, cost, Network(), [0.5, 2.1, 50.0], [0.0, 0.1, 2.0])
    assert m.height == 9
    # edge-only does not depend on the RTT, cloud-only does not depend on the edge
    spread = lambda by, col: m.group_by(by).agg(pl.col(col).max() - pl.col(col).min())[col].max()  # noqa: E731
    assert spread("edge_tps", "edge_only_s") < 1e-9
    assert spread("rtt_s", "cloud_only_s") < 1e-9
    # hybrid gets slower with RTT at a fixed edge
    for _, g in m.group_by("edge_tps"):
        assert np.all(np.diff(g.sort("rtt_s")["hybrid_s"].to_numpy()) > 0)
    assert (m["beats_edge"] == (m["hybrid_s"] < m["edge_only_s"])).all()


def test_grid_file(tmp_path):
    g = tmp_path / "grid.toml"
    g.write_text('[policy]\nk = [2, 5]\ngate = ["always", "entropy:2.5"]\naccept = ["top1"]\n'
                 '[network]\npreset = ["wifi", "4g"]\nrtt = ["10ms", "100ms"]\n'
                 '[device]\nedge = "study-cpu-2core"\ncloud = "h100-sxm"\nedge_speedup = [1, 2, 4]\n')
    pols, ax, cost, _ = load_grid(g, 64)
    assert len(pols) == 2 + 4 and len(ax) == 2 * 2 * 3
    assert cost.edge_prefill_a == 7.74
    g.write_text("[polcy]\nk = 3\n")
    with pytest.raises(UserError):
        load_grid(g, 64)


def test_parallel_sweep_equals_serial(rp):
    from sectrace.simulate.sweep import run_sweep_parallel

    pols = [Policy(k=k, gate=parse_gate(g), gate_spec=g) for k in (1, 2, 3, 5, 8) for g in ("always", "entropy:2.5")]
    ax = product_axes(NETS, [1.0, 2.0], [1.0])
    a = run_sweep(rp, pols, CostModel(), ax)
    b = run_sweep_parallel(sample_trace_path(), pols, CostModel(), ax, jobs=2)
    assert a.select("policy", "config").equals(b.select("policy", "config"))
    np.testing.assert_allclose(a["latency_s"].to_numpy(), b["latency_s"].to_numpy(), rtol=0, atol=1e-12)
