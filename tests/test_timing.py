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
            if ev.first:
                payload += audio + TOKEN_BYTES * utt["blind_prompt_tokens"]
                t += up(payload) + cost.cloud_prefill_a + cost.cloud_prefill_b * cprompt
            else:  # a call that prefills runs the block in the same pass: one call overhead, the prefill's
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
