"""The three timing engines against a plain reference written here, event by event, from docs/simulator.md.

The closed form (simulate), the sweep (run_sweep) and the fleet engine (one device, no jitter) all
price schedules through one cost vector (timing.cost_theta), so comparing them with one another
cannot find a mistake in that shared pricing. The reference below does not use the feature vector,
cost_theta or cost_vector: it walks a run's events and adds up seconds the way the documentation
describes them:

* edge prefill a + b·prompt; a draft step a + c·(prompt + ctx), except the utterance's first drafted
  token, which comes out of the prefill; each gate call gate_s;
* an escalation: uplink RTT/2 + (framing + payload bytes)/uplink + expected jitter and loss; the cloud
  pass; downlink RTT/2 + (framing + 8 bytes)/downlink + expected jitter and loss. The payload is token
  ids (4 bytes each): the instruction's ids and the audio payload on a stateful session's first call,
  afterwards only ids the cloud has not seen plus the block; a stateless call sends instruction,
  audio, committed caption and block every time. A call that prefills (stateful first call, every
  stateless call) is one pass from an empty cache over the prompt, the context the cloud has not got
  and the block: prefill a + b·(all of them), no verify cost of its own;
* cloud-only: the audio and instruction go up once, the cloud prefills, every decoding step after
  the first costs a + c·(prompt + ctx), and the caption comes down in one message at the end.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hand_world import UTT, hand_trace

from sectrace.gates import parse_gate
from sectrace.protocol import (
    Accept,
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
from sectrace.simulate import CostModel, Network, Replayer, simulate
from sectrace.simulate.fleet import Fleet, plans, simulate_fleet
from sectrace.simulate.sweep import product_axes, run_sweep

ID_BYTES = 4
ANSWER_BYTES = 8

# Every coefficient non-zero and distinct, so a term priced twice, dropped or swapped shows.
COST = CostModel(edge_prefill_a=1.1, edge_prefill_b=0.003, edge_step_a=0.3, edge_step_c=0.0007, gate_s=0.002,
                 cloud_prefill_a=0.2, cloud_prefill_b=0.0005, verify_a=0.04, verify_b=0.005, verify_c=0.0001,
                 cloud_step_a=0.045, cloud_step_c=0.00002, source="test")
NET = Network(rtt_s=0.06, up_Bps=150_000.0, down_Bps=400_000.0, overhead_bytes=120)


def reference(run_, pol: Policy, utt: dict, cost: CostModel, net: Network, extra_s: float = 0.0,
              edge_scale: float = 1.0, cloud_scale: float = 1.0) -> tuple[float, float]:
    """(latency, time to the first committed token) of one run, in seconds, summed event by event."""
    stateless = pol.cloud_cache == "stateless"
    audio = {"token-only": 0, "features": utt["feature_bytes"], "raw": utt["raw_audio_bytes"]}[pol.privacy]
    instr = utt["blind_prompt_tokens"]  # the instruction's token ids
    cloud_prompt = instr if pol.privacy == "token-only" else utt["cloud_prompt_tokens"]
    edge_prompt = utt["edge_prompt_tokens"]
    e, c = edge_scale, cloud_scale

    def up(nbytes):
        return net.rtt_s / 2 + (net.overhead_bytes + nbytes) / net.up_Bps + extra_s

    def down(nbytes):
        return net.rtt_s / 2 + (net.overhead_bytes + nbytes) / net.down_Bps + extra_s

    t, ttft = 0.0, None
    for ev in run_.events:
        if isinstance(ev, Prefill):
            t += e * (cost.edge_prefill_a + cost.edge_prefill_b * edge_prompt)
        elif isinstance(ev, Draft):
            if ev.ctx > 0:
                t += e * (cost.edge_step_a + cost.edge_step_c * (edge_prompt + ev.ctx))
        elif isinstance(ev, GateCall):
            t += cost.gate_s
        elif isinstance(ev, Verify):
            if stateless:
                t += up(audio + ID_BYTES * (instr + ev.ctx + ev.n))
                t += c * (cost.cloud_prefill_a + cost.cloud_prefill_b * (cloud_prompt + ev.ctx + ev.n))
            elif ev.first:
                t += up(audio + ID_BYTES * (instr + ev.unsent + ev.n))
                t += c * (cost.cloud_prefill_a + cost.cloud_prefill_b * (cloud_prompt + ev.pending + ev.n))
            else:
                t += up(ID_BYTES * (ev.unsent + ev.n)) + c * cost.verify_a
                t += c * (cost.verify_b * (ev.pending + ev.n)
                          + cost.verify_c * (cloud_prompt + ev.ctx - ev.pending))
            t += down(ANSWER_BYTES)
        elif isinstance(ev, CloudStart):
            t += up(audio + ID_BYTES * instr)
            t += c * (cost.cloud_prefill_a + cost.cloud_prefill_b * cloud_prompt)
        elif isinstance(ev, CloudStep):
            if ev.ctx > 0:
                t += c * (cost.cloud_step_a + cost.cloud_step_c * (cloud_prompt + ev.ctx))
        elif isinstance(ev, Commit):
            if ttft is None and ev.n > 0:
                ttft = t + (down(ID_BYTES) if pol.k == 0 else 0.0)
        else:
            pytest.fail(f"unexpected event {ev}")
    if pol.k == 0:
        t += down(ID_BYTES * len(run_.tokens))
    return t, ttft


def _pol(k, gate, accept, privacy, cache="stateful", max_new=64, bonus=True):
    return Policy(k=k, gate=parse_gate(gate), gate_spec=gate, accept=Accept.parse(accept), privacy=privacy,
                  cloud_cache=cache, bonus=bonus, max_new_tokens=max_new)


def _policies(max_new):
    """Baselines, both cloud caches, all privacy modes, a gate that leaves blocks unescalated (unsent ids)."""
    blind_cloud = Policy(k=0, gate=parse_gate("always"), gate_spec="always", accept=Accept("top1", 1),
                         privacy="token-only", max_new_tokens=max_new, name="cloud-only-blind")
    return [drafter_only(max_new), cloud_only(max_new), blind_cloud,
            _pol(3, "always", "top1", "features", max_new=max_new),
            _pol(3, "always", "top1", "token-only", "stateless", max_new=max_new),
            _pol(5, "entropy:2.5", "rank:20", "features", max_new=max_new),
            _pol(5, "entropy:2.5", "rank:20", "token-only", "stateless", max_new=max_new)]


def _utts(rp):
    return {r["utt_id"]: r for r in rp.trace.utterances.iter_rows(named=True)}


# --- one number worked out on paper ----------------------------------------------------------------------
ROUND = CostModel(edge_prefill_a=2.0, edge_prefill_b=0.0, edge_step_a=0.5, edge_step_c=0.0, gate_s=0.0,
                  cloud_prefill_a=0.25, cloud_prefill_b=0.015625, verify_a=0.125, verify_b=0.0625, verify_c=0.0,
                  cloud_step_a=0.125, cloud_step_c=0.0, source="round numbers")
ROUND_NET = Network(rtt_s=0.1, up_Bps=1000.0, down_Bps=1000.0, overhead_bytes=100)


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    pols = [_pol(3, "always", "rank:3", "features", max_new=6), cloud_only(6)]
    return Replayer(hand_trace(tmp_path_factory.mktemp("hand") / "hand", pols)), pols


def test_hand_world_latency_on_paper(hand):
    """k=3 rank:3 on the hand world (tests/hand_world.py), features, stateful; round-number costs:
    prefill 2; drafts at ctx 1, 2: 2 × 0.5; call 1 (first): up 0.05 + (100 + 3000 audio + 4·(3 + 20))/1000
    = 3.242, one prefill pass over prompt and block 0.25 + (70 + 3)/64, down 0.05 + 108/1000; draft at ctx 3:
    0.5; call 2: up 0.05 + 104/1000, verify 0.125 + 0.0625·(1 pending + 1), down 0.158. Cloud-only: up
    0.05 + (100 + 64000 + 80)/1000, prefill 0.25 + 70/64, steps at ctx 1..3: 3 × 0.125, down 0.05 + (100 + 16)/1000."""
    rp, (hybrid, cloud) = hand
    assert UTT["feature_bytes"] == 3000 and UTT["blind_prompt_tokens"] == 20 and UTT["raw_audio_bytes"] == 64000
    df = simulate(rp.trace, [hybrid, cloud], [(ROUND, ROUND_NET)], rp)
    lat = dict(zip(df["policy"], df["latency_s"]))
    ttft = dict(zip(df["policy"], df["ttft_s"]))
    first_call = 3.242 + (0.25 + 73 / 64) + 0.158
    assert lat[hybrid.label] == pytest.approx(2 + 1 + first_call + 0.5 + 0.154 + 0.25 + 0.158, abs=1e-12)
    assert ttft[hybrid.label] == pytest.approx(2 + 1 + first_call, abs=1e-12)
    assert lat["cloud-only"] == pytest.approx(64.23 + 0.25 + 70 / 64 + 0.375 + 0.166, abs=1e-12)
    assert ttft["cloud-only"] == pytest.approx(64.23 + 0.25 + 70 / 64 + 0.154, abs=1e-12)  # first token streamed down
    for pol in (hybrid, cloud):
        (r,) = rp.replay(pol).runs
        assert reference(r, pol, UTT, ROUND, ROUND_NET) == pytest.approx((lat[pol.label], ttft[pol.label]),
                                                                         abs=1e-12)


# --- the engines against the reference, on a synthetic and on the bundled real trace ----------------------
@pytest.fixture(scope="module", params=["synthetic", "real"])
def case(request, small_trace):
    if request.param == "synthetic":
        return Replayer(small_trace), _policies(48)
    from sectrace.trace import load_trace, sample_trace_path

    tr = load_trace(sample_trace_path())
    assert not tr.synthetic
    return Replayer(tr), _policies(32)


def _ref_rows(rp, pol, **kw):
    rep = rp.replay(pol)
    utts = _utts(rp)
    out = [reference(r, pol, utts[u], COST, NET, **kw) if r is not None else (math.nan, math.nan)
           for u, r in zip(rep.utt_ids, rep.runs)]
    return rep, np.array(out)


def test_closed_form_equals_the_reference(case):
    rp, pols = case
    df = simulate(rp.trace, pols, [(COST, NET)], rp)
    for pol in pols:
        rep, ref = _ref_rows(rp, pol)
        assert rep.covered.sum() >= 4, pol.label  # enough utterances to mean something
        rows = df.filter(df["policy"] == pol.label)
        assert rows["utt_id"].to_list() == rep.utt_ids
        ok = rep.covered
        np.testing.assert_allclose(rows["latency_s"].to_numpy()[ok], ref[ok, 0], rtol=1e-12, atol=1e-9,
                                   err_msg=pol.label)
        np.testing.assert_allclose(rows["ttft_s"].to_numpy()[ok], ref[ok, 1], rtol=1e-12, atol=1e-9,
                                   err_msg=pol.label)
        assert (ref[ok, 1] > 0).all() and (ref[ok, 1] <= ref[ok, 0]).all()


def test_closed_form_prices_jitter_and_loss_at_their_mean(case):
    """expon(scale=0.004) has mean 4 ms; loss 2 % costs 0.02/0.98 retransmission timeouts per message."""
    rp, pols = case
    net = Network(rtt_s=NET.rtt_s, up_Bps=NET.up_Bps, down_Bps=NET.down_Bps, overhead_bytes=NET.overhead_bytes,
                  jitter="expon(scale=0.004)", loss=0.02, rto_s=0.25)
    extra = 0.004 + 0.02 / 0.98 * 0.25
    df = simulate(rp.trace, pols[3:5], [(COST, net)], rp)
    for pol in pols[3:5]:
        rep, ref = _ref_rows(rp, pol, extra_s=extra)
        ok = rep.covered
        got = df.filter(df["policy"] == pol.label)["latency_s"].to_numpy()[ok]
        np.testing.assert_allclose(got, ref[ok, 0], rtol=1e-12, atol=1e-9, err_msg=pol.label)


def test_fleet_of_one_device_equals_the_reference(case):
    rp, pols = case
    for pol in pols:
        rep, ref = _ref_rows(rp, pol)
        df = simulate_fleet(plans(rp, rep), COST, NET, Fleet(), stateful=pol.cloud_cache == "stateful")
        ok = rep.covered
        assert df["utt_id"].to_list() == [u for u, c in zip(rep.utt_ids, ok) if c]
        np.testing.assert_allclose(df["latency_s"].to_numpy(), ref[ok, 0], rtol=1e-12, atol=1e-9, err_msg=pol.label)
        assert (df["queue_s"].to_numpy() == 0).all()


def test_sweep_equals_the_reference(case):
    """Sweep rows are means over covered utterances; speed-ups divide edge or cloud model time."""
    rp, pols = case
    edge_speedups, cloud_speedups = [1.0, 2.0], [1.0, 0.5]
    ax = product_axes([NET], edge_speedups, cloud_speedups)
    df = run_sweep(rp, pols, COST, ax)
    for pol in pols:
        rows = df.filter(df["policy"] == pol.label).sort("config")
        assert rows.height == 4
        for row in rows.iter_rows(named=True):
            rep, ref = _ref_rows(rp, pol, edge_scale=1 / row["edge_speedup"], cloud_scale=1 / row["cloud_speedup"])
            ok = rep.covered
            assert row["covered"] == ok.sum()
            assert row["latency_s"] == pytest.approx(ref[ok, 0].mean(), rel=1e-12, abs=1e-9), pol.label
            assert row["latency_p50_s"] == pytest.approx(np.median(ref[ok, 0]), rel=1e-12, abs=1e-9), pol.label
            assert row["ttft_s"] == pytest.approx(ref[ok, 1].mean(), rel=1e-12, abs=1e-9), pol.label
