"""Aggregate-first pricing: factored timed columns give the sums, rows and summaries the multiplied-out arrays give."""

import numpy as np
import pytest
from conftest import synthetic_replayer
from hypothesis import given
from hypothesis import strategies as st

from sectrace.gates import parse_gate
from sectrace.network import Network
from sectrace.protocol import Policy, cloud_only, drafter_only
from sectrace.simulate import CostModel
from sectrace.simulate import sweep as sweep_mod
from sectrace.simulate.aggregate import Linear, nan_rows, rows, sums, values
from sectrace.simulate.overhead import BREAKDOWN_PARTS, breakdown_linear, overhead
from sectrace.simulate.sweep import product_axes, sweep_policy, theta_grid

NETS = [Network(rtt_s=0.01, name="a"), Network(rtt_s=0.2, up_Bps=1e5, down_Bps=3e5, overhead_bytes=40, name="b",
                                                jitter="expon(scale=0.003)", loss=0.02)]


@pytest.fixture(scope="module")
def rp():
    return synthetic_replayer()


@given(st.integers(1, 30), st.integers(1, 6), st.integers(1, 9), st.integers(1, 5), st.integers(0, 2**31))
def test_linear_sums_and_values_are_the_product(n, f, c, r, seed):
    g = np.random.default_rng(seed)
    F, th, minus = g.normal(size=(n, f)), g.normal(size=(f, c)), g.normal(size=(n, c))
    w = g.integers(0, 4, size=(r, n)).astype(float)
    for lin, dense in ((Linear(F, th), F @ th), (Linear(F, th, minus), F @ th - minus)):
        np.testing.assert_allclose(values(lin), dense, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(values(lin, 1, c), dense[:, 1:], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sums(lin, w), w @ dense, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(sums(lin, w, 0, 1), sums(dense, w, 0, 1), rtol=1e-12, atol=1e-9)
        mask = g.random(n) < 0.5
        np.testing.assert_allclose(values(rows(lin, mask)), dense[mask], rtol=1e-12, atol=1e-12)
    F[0, 0] = np.nan
    assert nan_rows(Linear(F, th)).tolist() == np.isnan(F @ th).any(axis=1).tolist()


def test_breakdown_linear_adds_up_to_latency(rp):
    pol = Policy(k=4, gate=parse_gate("entropy:2.5"), gate_spec="entropy:2.5", cloud_cache="stateless")
    ax = product_axes(NETS, [0.5, 3.0], [1.0, 2.0])
    theta = theta_grid(CostModel(), ax)
    rep = rp.replay(pol)
    parts = breakdown_linear(rep, overhead(rp, rep), theta, ax.up_Bps)
    assert set(parts) == set(BREAKDOWN_PARTS)
    ok = rep.covered
    total = sum(values(p)[ok] for p in parts.values())
    np.testing.assert_allclose(total, (rep.total @ theta)[ok], rtol=1e-12)
    resync = values(parts["resync"])[ok]
    assert (values(parts["wasted_drafts"])[ok] >= 0).all() and (resync >= 0).all() and resync.max() > 0


POLICIES = [Policy(k=4, gate=parse_gate("entropy:2.5"), gate_spec="entropy:2.5", bonus=False),
            Policy(k=3, gate=parse_gate("always"), gate_spec="always", cloud_cache="stateless", privacy="token-only"),
            Policy(k=8, gate=parse_gate("margin:0.2"), gate_spec="margin:0.2"),  # misses some utterances
            drafter_only(64), cloud_only(64)]


@pytest.mark.parametrize("ci", [True, False])
def test_factored_sweep_equals_multiplied_out(rp, monkeypatch, ci):
    """The sweep's rows priced aggregate first equal those priced from utterances × configurations arrays
    (the previous way), to 1e-12 relative; the intervals come from the same resamples."""
    ax = product_axes(NETS, [0.5, 1.0, 4.0], [1.0, 2.0])
    cost = CostModel()
    real = sweep_mod.summary_columns

    def dense(d):
        return {k: values(v) if isinstance(v, Linear) else v for k, v in d.items()}

    def materialised(counts, timed, n_cfg, baselines=None, **kw):
        assert any(isinstance(v, Linear) for v in timed.values())
        return real(counts, dense(timed), n_cfg, baselines=dense(baselines), **kw)

    factored = [sweep_policy(rp, p, cost, ax, ci=ci) for p in POLICIES]
    monkeypatch.setattr(sweep_mod, "summary_columns", materialised)
    reference = [sweep_policy(rp, p, cost, ax, ci=ci) for p in POLICIES]
    assert any(int(r["covered"][0]) < int(r["utterances"][0]) for r in reference)
    for a, b in zip(factored, reference):
        assert a.keys() == b.keys()
        assert ("latency_s_lo" in a) == ci
        for key in a:
            x, y = a[key], b[key]
            if isinstance(x, np.ndarray) and x.dtype.kind == "f":
                assert (np.isnan(x) == np.isnan(y)).all(), key
                ok = ~np.isnan(y)
                scale = np.abs(b["latency_s"]) if key.startswith("t_") or key == "overlap_hidden_s" else np.abs(y)
                assert (np.abs(x - y)[ok] <= 1e-12 * scale[ok]).all(), key
            else:
                assert list(x) == list(y), key


@given(st.integers(1, 120), st.integers(1, 5), st.sampled_from([0.0, 1.0, 50.0, 90.0, 95.0, 99.9, 100.0, 37.5]),
       st.booleans(), st.integers(0, 2**31))
def test_sorted_percentile_is_numpys(n, c, q, ties, seed):
    from sectrace.simulate.metrics import sorted_percentile

    g = np.random.default_rng(seed)
    x = g.integers(0, 4, size=(c, n)).astype(float) if ties else g.exponential(size=(c, n))
    if seed % 7 == 0:
        x[0, g.integers(n)] = np.nan
    ref = np.percentile(x, q, axis=1)
    got = sorted_percentile(np.sort(x, axis=1), q)
    assert np.array_equal(got, ref, equal_nan=True)
