"""Closed-form timing against hand sums and against a plain event-by-event clock."""

from __future__ import annotations

import numpy as np
import pytest

from sectrace.protocol import (
    Accept,
    Always,
    CloudStart,
    CloudStep,
    Commit,
    Draft,
    GateCall,
    Policy,
    Prefill,
    Verify,
    cloud_only,
    drafter_only,
)
from sectrace.simulate import CostModel, Network, Replayer, cost_matrix, latency
from sectrace.simulate.replay import DOWN_PAYLOAD_BYTES, TOKEN_BYTES

COST = CostModel(edge_prefill_a=1.0, edge_prefill_b=0.01, edge_step_a=0.5, edge_step_c=0.001, gate_s=0.002,
                 cloud_prefill_a=0.3, cloud_prefill_b=0.001, verify_a=0.04, verify_b=0.003, verify_c=0.0001,
                 cloud_step_a=0.04, cloud_step_c=0.0002)
NET = Network(rtt_s=0.08, up_Bps=1e6, down_Bps=4e6, overhead_bytes=50)


def clock(run, policy, utt, cost=COST, net=NET):
    """An independent, event-by-event clock: returns (ttft, total)."""
    t, ttft, cloud_seen = 0.0, None, False
    blind = policy.verifier_mode == "blind"
    cprompt = utt["blind_prompt_tokens"] if blind else utt["cloud_prompt_tokens"]
    audio = {"token-only": 0, "features": utt["feature_bytes"], "raw": utt["raw_audio_bytes"]}[policy.privacy]
    up = lambda b: net.rtt_s / 2 + (b + net.overhead_bytes) / net.up_Bps  # noqa: E731
    down = lambda b: net.rtt_s / 2 + (b + net.overhead_bytes) / net.down_Bps  # noqa: E731
    for ev in run.events:
        if isinstance(ev, Prefill):
            t += cost.edge_prefill_a + cost.edge_prefill_b * utt["edge_prompt_tokens"]
        elif isinstance(ev, Draft) and ev.ctx:  # the first token comes with the prefill
            t += cost.edge_step_a + cost.edge_step_c * (utt["edge_prompt_tokens"] + ev.ctx)
        elif isinstance(ev, GateCall):
            t += cost.gate_s
        elif isinstance(ev, Verify):
            assert policy.cloud_cache == "stateful"
            payload = TOKEN_BYTES * (ev.unsent + ev.n)
            if ev.first:  # one pass from an empty cache: prompt, unsent context and block, all at the prefill slope
                payload += audio + TOKEN_BYTES * utt["blind_prompt_tokens"]
                t += up(payload) + cost.cloud_prefill_a + cost.cloud_prefill_b * (cprompt + ev.pending + ev.n)
            else:  # a call on the cached context: its overhead, per new token, per cached token
                t += up(payload) + cost.verify_a
                t += cost.verify_b * (ev.pending + ev.n) + cost.verify_c * (cprompt + ev.ctx - ev.pending)
            t += down(DOWN_PAYLOAD_BYTES)
        elif isinstance(ev, CloudStart):
            t += up(audio + TOKEN_BYTES * utt["blind_prompt_tokens"]) + cost.cloud_prefill_a + cost.cloud_prefill_b * cprompt
            cloud_seen = True
        elif isinstance(ev, CloudStep) and ev.ctx:
            t += cost.cloud_step_a + cost.cloud_step_c * (cprompt + ev.ctx)
        elif isinstance(ev, Commit) and ttft is None and ev.n:
            ttft = t + (down(TOKEN_BYTES) if cloud_seen else 0.0)
    if cloud_seen:
        t += down(TOKEN_BYTES * len(run.tokens))
    return ttft, t


@pytest.mark.parametrize("policy", [
    drafter_only(48), cloud_only(48),
    Policy(k=3, gate=Always(), gate_spec="always", accept=Accept("rank", 5), privacy="features", max_new_tokens=48),
    Policy(k=5, gate=Always(), gate_spec="always", accept=Accept("top1", 1), privacy="token-only", max_new_tokens=48),
], ids=lambda p: p.label)
def test_closed_form_equals_event_clock(small_trace, policy):
    rp = Replayer(small_trace)
    rep = rp.replay(policy)
    theta = cost_matrix([(COST, NET)])
    tot = latency(rep.total, theta)[:, 0]
    fst = latency(rep.first, theta)[:, 0]
    utts = {r["utt_id"]: r for r in small_trace.utterances.iter_rows(named=True)}
    for i, (uid, r) in enumerate(zip(rep.utt_ids, rep.runs)):
        assert r is not None
        ttft, total = clock(r, policy, utts[uid])
        assert tot[i] == pytest.approx(total, abs=1e-9)
        assert fst[i] == pytest.approx(ttft, abs=1e-9)


def test_edge_only_by_hand(small_trace):
    rep = Replayer(small_trace).replay(drafter_only(48))
    u = small_trace.utterances.row(0, named=True)
    n = len(rep.runs[0].tokens)
    p = u["edge_prompt_tokens"]
    want = 1.0 + 0.01 * p + sum(0.5 + 0.001 * (p + i) for i in range(1, n)) + n * 0.002
    assert latency(rep.total, cost_matrix([(COST, NET)]))[0, 0] == pytest.approx(want, abs=1e-9)


def test_vectorised_over_configurations(small_trace):
    rep = Replayer(small_trace).replay(cloud_only(48))
    rtts = np.linspace(0.0, 0.5, 101)
    lat = latency(rep.total, cost_matrix([(COST, Network(rtt_s=r)) for r in rtts]))
    # cloud-only pays exactly one round trip (upload, then the stream down)
    assert np.allclose(np.diff(lat, axis=1), rtts[1] - rtts[0])


def test_stateless_sends_more_than_stateful(small_trace):
    rp = Replayer(small_trace)
    kw = dict(k=3, gate=Always(), gate_spec="always", accept=Accept("rank", 20), privacy="features", max_new_tokens=48)
    a = rp.replay(Policy(cloud_cache="stateful", **kw))
    b = rp.replay(Policy(cloud_cache="stateless", **kw))
    assert all(ra.tokens == rb.tokens for ra, rb in zip(a.runs, b.runs))  # timing-only knob
    assert (b.bytes_up > a.bytes_up).all()
    assert (b.audio_bytes_up >= a.audio_bytes_up).all()


def test_schedule_frame_lists_bytes_per_escalation(small_trace):
    from sectrace.simulate.replay import schedule_frame

    pol = Policy(k=3, gate=Always(), gate_spec="always", accept=Accept("rank", 5), privacy="features",
                 max_new_tokens=48)
    rep = Replayer(small_trace).replay(pol)
    utt = small_trace.utterances.row(0, named=True)
    df = schedule_frame(rep.runs[0], pol, utt)
    assert df["event"][0] == "Prefill" and df["event"][-1] == "Commit"
    verify = df.filter(df["event"] == "Verify")
    assert verify.height == rep.runs[0].escalations
    assert verify["audio_bytes_up"][0] == utt["feature_bytes"] and (verify["audio_bytes_up"][1:] == 0).all()
    assert verify["bytes_up"].sum() == rep.bytes_up[0]


def test_cost_theta_by_hand_with_a_verify_table_and_scales():
    """Each row of the cost vector by hand: edge rows scale with the edge, cloud rows with the cloud, the gate and
    the network with neither; with a verify table a j-token call costs its table entry (times the cloud scale)."""
    from sectrace.simulate.replay import FI, VERIFY_SIZE_FEATURES
    from sectrace.simulate.timing import cost_theta

    table = tuple(0.01 * n + 0.001 * n * n for n in range(1, 17))  # 0.011, 0.024, ..., 0.416 s
    cost = CostModel(edge_prefill_a=1.0, edge_prefill_b=0.01, edge_step_a=0.5, edge_step_c=0.001, gate_s=0.002,
                     cloud_prefill_a=0.3, cloud_prefill_b=0.001, verify_a=0.04, verify_b=0.003, verify_c=0.0001,
                     cloud_step_a=0.04, cloud_step_c=0.0002, verify_table=table)
    th = cost_theta(cost, rtt_s=0.08, up_Bps=1e6, down_Bps=4e6, overhead_bytes=50, extra_s=0.01, edge_scale=3.0,
                    cloud_scale=2.0)
    want = {"edge_prefills": 3.0, "edge_prefill_tokens": 0.03, "draft_steps": 1.5, "draft_ctx": 0.003,
            "gate_calls": 0.002,
            "up_msgs": 0.04 + 50e-6 + 0.01, "up_bytes": 1e-6, "down_msgs": 0.04 + 12.5e-6 + 0.01, "down_bytes": 2.5e-7,
            "cloud_prefills": 0.6, "cloud_prefill_tokens": 0.002, "verify_calls": 0.08, "verify_tokens": 0.006,
            "verify_ctx": 0.0002, "prefill_verify_tokens": 0.002, "cloud_steps": 0.08, "cloud_ctx": 0.0004,
            # (table[j] - verify_a - verify_b·j) · 2: j=1 (0.011 - 0.04 - 0.003)·2, j=2 (0.024 - 0.04 - 0.006)·2,
            # j=16 (0.416 - 0.04 - 0.048)·2
            "verify_calls_n1": -0.064, "verify_calls_n2": -0.044, "verify_calls_n16": 0.656}
    for name, v in want.items():
        assert th[FI[name]] == pytest.approx(v, abs=1e-12), name
    for j, name in enumerate(VERIFY_SIZE_FEATURES, 1):  # a j-token call at context 0 pays its table entry, scaled
        call = th[FI["verify_calls"]] + j * th[FI["verify_tokens"]] + th[FI[name]]
        assert call == pytest.approx(2.0 * table[j - 1], abs=1e-12), name


@pytest.mark.parametrize("arg", ["rtt_s", "up_Bps", "down_Bps", "overhead_bytes", "extra_s", "edge_scale",
                                 "cloud_scale"])
def test_cost_theta_vectorises_over_any_one_argument(arg):
    """Any one network field or scale given per configuration yields one column per configuration, each the
    scalar cost vector of that configuration."""
    from sectrace.simulate.timing import cost_theta

    base = dict(rtt_s=0.08, up_Bps=1e6, down_Bps=4e6, overhead_bytes=50.0, extra_s=0.01, edge_scale=1.5,
                cloud_scale=0.5)
    values = np.array([1.0, 2.0, 4.0]) * base[arg]
    th = cost_theta(COST, **{**base, arg: values})
    assert th.shape == (len(cost_theta(COST, **base)), 3)
    for i, v in enumerate(values):
        np.testing.assert_allclose(th[:, i], cost_theta(COST, **{**base, arg: float(v)}), rtol=1e-12)
    assert not np.allclose(th[:, 0], th[:, 2])  # the argument moved some row


def test_cost_theta_defaults_add_no_jitter_and_no_speed_up():
    """Left out, the jitter delay is 0 and both scales are 1 (reports/study.py relies on it)."""
    from sectrace.simulate.replay import FI
    from sectrace.simulate.timing import cost_theta

    th = cost_theta(COST, 0.08, 1e6, 4e6, 50)
    assert th[FI["up_msgs"]] == pytest.approx(0.04 + 50e-6, abs=1e-15)
    assert th[FI["down_msgs"]] == pytest.approx(0.04 + 12.5e-6, abs=1e-15)
    assert (th[FI["draft_steps"]], th[FI["verify_calls"]]) == (0.5, 0.04)
