"""The SimPy fleet engine against the closed form, and the fleet effects the closed form cannot see."""

import numpy as np
import polars as pl
import pytest
from conftest import synthetic_replayer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sectrace.errors import UserError
from sectrace.gates import parse_gate
from sectrace.protocol import Accept, Policy, cloud_only
from sectrace.simulate import CostModel, Network, fit_costs, latency
from sectrace.simulate.fleet import Fleet, fleet_summary, plans, simulate_fleet
from sectrace.simulate.timing import cost_vector


@pytest.fixture(scope="module")
def rp():
    return synthetic_replayer()


def _policy(k, gate, accept, privacy, cache, bonus):
    if k == 0:
        return cloud_only(64)
    return Policy(k=k, gate=parse_gate(gate), gate_spec=gate, accept=Accept.parse(accept), bonus=bonus,
                  privacy=privacy, cloud_cache=cache, max_new_tokens=64)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.sampled_from([0, 1, 2, 3, 5, 8]), gate=st.sampled_from(["always", "never", "entropy:2.5", "margin:0.2"]),
       accept=st.sampled_from(["top1", "rank:20", "prob:0.1"]), privacy=st.sampled_from(["token-only", "features"]),
       cache=st.sampled_from(["stateful", "stateless"]), bonus=st.booleans(),
       rtt=st.floats(0.0, 1.0), up=st.floats(1e4, 1e9), down=st.floats(1e4, 1e9), ovh=st.integers(0, 2000),
       edge_speed=st.floats(0.1, 50.0), cloud_speed=st.floats(0.1, 50.0), max_batch=st.integers(1, 16))
def test_one_device_equals_the_closed_form_on_every_utterance(rp, k, gate, accept, privacy, cache, bonus, rtt, up,
                                                              down, ovh, edge_speed, cloud_speed, max_batch):
    pol = _policy(k, gate, accept, privacy, cache, bonus)
    rep = rp.replay(pol)
    cost = fit_costs(rp.trace.timings).scaled(edge_speed, cloud_speed)
    net = Network(rtt_s=rtt, up_Bps=up, down_Bps=down, overhead_bytes=ovh)
    df = simulate_fleet(plans(rp, rep), cost, net, Fleet(max_batch=max_batch), stateful=cache == "stateful")
    closed = latency(rep.total, cost_vector(cost, net))[rep.covered]
    assert df["utt_id"].to_list() == [u for u, c in zip(rep.utt_ids, rep.covered) if c]
    np.testing.assert_allclose(df["latency_s"].to_numpy(), closed, rtol=0, atol=1e-9)
    # and where the time went adds up
    parts = df.select(["edge_s", "uplink_s", "queue_s", "cloud_s", "downlink_s"]).to_numpy().sum(axis=1)
    np.testing.assert_allclose(parts, closed, rtol=0, atol=1e-9)
    assert df["queue_s"].abs().max() < 1e-12


def test_plans_add_up_to_the_schedule_features(rp):
    pol = _policy(5, "entropy:2.5", "rank:20", "features", "stateful", True)
    rep = rp.replay(pol)
    for p, tot in zip(plans(rp, rep), rep.total):
        s = p.edge.sum(0) + p.up.sum(0) + p.cloud.sum(0) + p.down.sum(0)
        np.testing.assert_array_equal(s, tot)
        assert sum(p.kinds) == len(p.up)


def test_shared_servers_queue_and_batching_helps(rp):
    pol = _policy(3, "always", "rank:20", "features", "stateful", True)
    pl_ = plans(rp, rp.replay(pol))
    cost, net = CostModel(), Network(rtt_s=0.02)
    solo = fleet_summary(simulate_fleet(pl_, cost, net, Fleet(devices=1, utterances_per_device=10)))
    crowd = fleet_summary(simulate_fleet(pl_, cost, net, Fleet(devices=200, max_batch=1, utterances_per_device=3)))
    batched = fleet_summary(simulate_fleet(pl_, cost, net, Fleet(devices=200, max_batch=32, utterances_per_device=3)))
    assert solo["queue_mean_s"] == 0.0
    assert crowd["queue_mean_s"] > 1.0
    assert batched["queue_mean_s"] < crowd["queue_mean_s"] / 2
    assert batched["latency_mean_s"] < crowd["latency_mean_s"]


def test_batching_window_delays_a_lone_device(rp):
    pol = _policy(5, "always", "top1", "features", "stateful", True)
    rep = rp.replay(pol)
    pl_ = plans(rp, rep)
    cost, net = CostModel(), Network()
    a = simulate_fleet(pl_, cost, net, Fleet())
    b = simulate_fleet(pl_, cost, net, Fleet(batch_window_s=0.01))
    extra = (b["latency_s"] - a["latency_s"]).to_numpy()
    np.testing.assert_allclose(extra, 0.01 * a["cloud_calls"].to_numpy(), atol=1e-9)


def test_loss_and_jitter_average_to_the_closed_form_expectation(rp):
    pol = _policy(3, "always", "rank:20", "features", "stateful", True)
    rep = rp.replay(pol)
    pl_ = plans(rp, rep)
    cost = CostModel()
    net = Network(rtt_s=0.05, jitter="expon(scale=0.01)", loss=0.2, rto_s=0.2)
    runs = [simulate_fleet(pl_, cost, net, Fleet(seed=s))["latency_s"].to_numpy() for s in range(10)]
    sim_mean = np.mean(runs)
    closed_mean = latency(rep.total, cost_vector(cost, net))[rep.covered].mean()
    quiet_mean = latency(rep.total, cost_vector(cost, Network(rtt_s=0.05)))[rep.covered].mean()
    assert abs(sim_mean - closed_mean) < 0.1 * (closed_mean - quiet_mean)
    assert np.std(runs[0] - runs[1]) > 0  # it does sample


def test_stateful_sessions_stay_on_one_server_stateless_spread(rp):
    pol = _policy(3, "always", "rank:20", "features", "stateful", True)
    pl_ = plans(rp, rp.replay(pol))
    f = Fleet(devices=40, servers=4, utterances_per_device=2)
    a = simulate_fleet(pl_, CostModel(), Network(), f, stateful=True)
    b = simulate_fleet(pl_, CostModel(), Network(), f, stateful=False)
    assert a["cloud_calls"].sum() == b["cloud_calls"].sum() > 0
    assert (a.filter(a["cloud_calls"] > 0)["servers_used"] == 1).all()  # the KV cache lives on one server
    assert b["servers_used"].max() > 1  # stateless calls go wherever the queue is shortest


def test_bad_fleets():
    with pytest.raises(UserError):
        Fleet(devices=0)
    with pytest.raises(UserError):
        Fleet(max_batch=0)
    with pytest.raises(UserError):
        Fleet(arrival_rate=-1)


def test_poisson_arrivals_wait_on_a_busy_device(rp):
    pol = _policy(5, "entropy:2.5", "rank:20", "features", "stateful", True)
    pl_ = plans(rp, rp.replay(pol))
    slow = simulate_fleet(pl_, CostModel(), Network(), Fleet(devices=3, arrival_rate=0.001, utterances_per_device=8))
    fast = simulate_fleet(pl_, CostModel(), Network(), Fleet(devices=3, arrival_rate=1.0, utterances_per_device=8))
    for df in (slow, fast):
        assert (df["response_s"] >= df["latency_s"] - 1e-12).all()
        assert (df["start_s"] >= df["arrival_s"]).all()
    # arrivals far faster than service pile up on the device; rare ones barely wait
    assert (fast["response_s"] - fast["latency_s"]).mean() > 10 * (slow["response_s"] - slow["latency_s"]).mean()


@pytest.mark.parametrize("arrival_rate", [None, 0.2])
def test_many_devices_keep_fractional_start_times(small_trace, arrival_rate):
    """Issue 13: past ~100 devices the first rows to finish all started at SimPy's integer 0, polars typed
    ``start_s`` as an integer column and truncated every later start, overstating latency. Back to back, a
    device's second utterance starts when its first ends (a fractional time); with Poisson arrivals every start is.
    Latency must equal the time the device process itself accumulated (edge, links, queue, cloud), all floats."""
    from sectrace.simulate import Replayer

    rp = Replayer(small_trace)
    pol = _policy(3, "always", "rank:20", "features", "stateful", True)
    df = simulate_fleet(plans(rp, rp.replay(pol)), CostModel(), Network(rtt_s=0.02),
                        Fleet(devices=500, servers=4, max_batch=16, arrival_rate=arrival_rate,
                              utterances_per_device=2 if arrival_rate is None else 1, seed=1))
    assert df.height == (1000 if arrival_rate is None else 500)
    for col in ("arrival_s", "start_s", "finish_s", "latency_s", "response_s"):
        assert df.schema[col] == pl.Float64, col
    start, finish, lat = (df[c].to_numpy() for c in ("start_s", "finish_s", "latency_s"))
    assert (start % 1 != 0).sum() >= 400  # fractional starts survived
    spent = df.select(["edge_s", "uplink_s", "queue_s", "cloud_s", "downlink_s"]).to_numpy().sum(axis=1)
    np.testing.assert_allclose(lat, spent, rtol=0, atol=1e-9)
    np.testing.assert_allclose(lat, finish - start, rtol=0, atol=1e-12)
    assert np.isfinite(lat).all() and (lat > 0).all()
    assert (start >= df["arrival_s"].to_numpy() - 1e-12).all()
    if arrival_rate is None:  # back to back: each device's second utterance starts as its first finishes
        by = df.sort("start_s").group_by("device", maintain_order=True).agg(pl.col("start_s"), pl.col("finish_s"))
        for s, f in zip(by["start_s"].to_list(), by["finish_s"].to_list()):
            assert s[0] == 0.0 and s[1] == f[0]
