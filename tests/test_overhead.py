"""Overhead breakdown and overlap (closed form)."""

from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from conftest import synthetic_replayer

from sectrace.gates import parse_gate
from sectrace.protocol import Accept, Commit, Draft, GateCall, Policy, Verify, cloud_only, drafter_only
from sectrace.simulate import CostModel, Network, latency, simulate
from sectrace.simulate.overhead import SHADOW, overhead, overlap_hidden
from sectrace.simulate.timing import cost_matrix


@pytest.fixture(scope="module")
def rp():
    return synthetic_replayer()


POLICIES = [
    drafter_only(64), cloud_only(64),
    Policy(k=4, gate=parse_gate("always"), gate_spec="always", bonus=False),
    Policy(k=5, gate=parse_gate("entropy:2.5"), gate_spec="entropy:2.5", accept=Accept("top1", 1)),
    Policy(k=3, gate=parse_gate("always"), gate_spec="always", accept=Accept("top1", 1), cloud_cache="stateless",
           privacy="token-only"),
]


def test_parts_add_up_to_latency(rp):
    configs = [(CostModel(), Network(rtt_s=r, overhead_bytes=300)) for r in (0.0, 0.05, 0.6)]
    df = simulate(rp.trace, POLICIES, configs, replayer=rp).filter(pl.col("covered"))
    parts = [c for c in df.columns if c.startswith("t_")]
    gap = df.select((pl.sum_horizontal(parts) - pl.col("latency_s")).abs().max()).item()
    assert gap < 1e-9
    assert df.select(pl.min_horizontal(parts).min()).item() >= -1e-12  # no part is negative
    # with top-1 acceptance some drafts are thrown away, and they are priced
    strict = df.filter(pl.col("accept") == "top1")
    assert strict["t_wasted_drafts_s"].sum() > 0 and strict["t_resync_s"].sum() > 0


def test_wasted_steps_match_the_runs(rp):
    for pol in POLICIES:
        rep = rp.replay(pol)
        ov = overhead(rp, rep)
        for r, row in zip(rep.runs, ov.shadow):
            if r is not None:
                # wasted drafter steps: wasted tokens, less the first token if it was wasted (it came with the prefill)
                first_block = next(e for e in r.events if type(e) is Verify or type(e) is Commit)
                first_lost = type(first_block) is Verify and first_block.ctx == 0 and first_block.accepted == 0
                assert row[SHADOW.index("wasted_steps")] == r.wasted - first_lost


def test_overlap_hides_next_block_drafting_when_the_round_trip_is_long(rp):
    pol = POLICIES[2]  # always escalate, no bonus: every fully accepted block lets the edge run ahead
    rep = rp.replay(pol)
    ov = overhead(rp, rep)
    cost = replace(CostModel(), edge_step_c=0.0)
    theta = cost_matrix([(cost, Network(rtt_s=1000.0))])
    hidden = overlap_hidden(ov, len(rep.utt_ids), theta)[:, 0]
    for u, r in enumerate(rep.runs):
        if r is None:
            continue
        expect = 0
        ev = r.events
        for i, e in enumerate(ev):
            if type(e) is Verify and not e.corrected and not e.bonus:
                j = i + 1
                while j < len(ev) and type(ev[j]) is not GateCall:
                    expect += type(ev[j]) is Draft
                    j += 1
        assert hidden[u] == pytest.approx(expect * cost.edge_step_a)
    assert hidden.sum() > 0


def test_overlap_never_hides_more_than_the_round_trips(rp):
    for pol in POLICIES:
        rep = rp.replay(pol)
        configs = [(CostModel(), Network(rtt_s=r)) for r in (0.0, 0.02, 0.3)]
        theta = cost_matrix(configs)
        hidden = overlap_hidden(overhead(rp, rep), len(rep.utt_ids), theta)
        lat = latency(rep.total, theta)
        ok = rep.covered
        assert np.all(hidden[ok] >= 0) and np.all(hidden[ok] <= lat[ok])
        if pol.name:  # edge-only and cloud-only have nothing in flight to overlap
            assert np.all(hidden == 0)
