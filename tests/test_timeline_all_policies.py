"""Timelines for every policy a `simulate` run wrote: each exports, and its spans add up to the result's latency.

Issue 13: on the bundled real trace every hybrid's timeline failed (exit 2), because its first verify
call, which runs in the cloud prefill's pass, was priced apart from it and its negative part dropped.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from sectrace.cli import main
from sectrace.errors import UserError
from sectrace.gates import parse_gate
from sectrace.protocol import Accept, Policy, cloud_only, drafter_only
from sectrace.reports.inputs import normalise_configs
from sectrace.simulate import CostModel, Network, Replayer, cost_vector, fit_costs, schedule_features
from sectrace.simulate.replay import FI
from sectrace.simulate.spans import event_features, run_timeline
from sectrace.trace import load_trace, sample_trace_path

REAL = str(sample_trace_path())

# (trace, simulate flags): gates, k, privacy and cloud caches, stateless included, on the real and a synthetic trace
RUNS = {
    "real-features-stateful": (REAL, ["--k", "3,5", "--gate", "entropy:2.5", "--gate", "always", "--gate", "never",
                                      "--gate", "margin:0.3", "--rtt", "20ms,150ms"]),
    "real-token-only-stateless": (REAL, ["--k", "3,5", "--gate", "always", "--gate", "logprob:-1",
                                         "--privacy", "token-only", "--cloud-cache", "stateless"]),
    "real-raw-adaptive-study": (REAL, ["--k", "8", "--gate", "entropy:1.5", "--adaptive", "0.3", "--privacy", "raw",
                                       "--costs", "study", "--rtt", "5ms"]),
    "synthetic-stateless": (None, ["--k", "2,5", "--gate", "always", "--gate", "entropy:2.5", "--cloud-cache",
                                   "stateless", "--rtt", "80ms"]),
    "synthetic-token-only": (None, ["--k", "3", "--gate", "margin:0.2", "--privacy", "token-only",
                                    "--rtt", "10ms,300ms"]),
}


@pytest.fixture(scope="module", params=sorted(RUNS))
def simulated(request, tmp_path_factory, small_trace_path):
    trace, flags = RUNS[request.param]
    trace = trace or str(small_trace_path)
    out = tmp_path_factory.mktemp("sim") / "r.parquet"
    r = CliRunner().invoke(main, ["simulate", "--trace", trace, *flags, "--out", str(out)])
    assert r.exit_code == 0, r.output
    return trace, out


def test_every_policy_exports_a_timeline_that_adds_up(simulated, tmp_path):
    trace, results = simulated
    res = normalise_configs(pl.read_parquet(results))
    policies = res["policy"].unique(maintain_order=True).to_list()
    assert len(policies) >= 3 and "edge-only" in policies and "cloud-only" in policies
    runner = CliRunner()
    shown = 0
    for policy in policies:
        for config in res["config"].unique().sort().to_list():
            rows = res.filter((pl.col("policy") == policy) & (pl.col("config") == config) & pl.col("covered"))
            assert rows.height >= 2, (policy, config)
            for row in rows.head(2).iter_rows(named=True):
                out = tmp_path / "t.json"
                r = runner.invoke(main, ["timeline", str(results), "--force", "--trace", trace, "--policy", policy,
                                         "--utt", row["utt_id"], "--config", str(config), "--out", str(out)])
                assert r.exit_code == 0, (policy, row["utt_id"], r.output)
                _check(json.loads(out.read_text()), row)
                shown += 1
    assert shown >= 2 * len(policies)


def _check(d: dict, row: dict):
    """Physical invariants of one exported timeline against its results row (µs in the JSON, rounded to 1 ns)."""
    spans = [e for e in d["traceEvents"] if e["ph"] == "X"]
    instants = [e for e in d["traceEvents"] if e["ph"] == "i"]
    lat_us = row["latency_s"] * 1e6
    assert spans and all(np.isfinite(e["ts"]) and np.isfinite(e["dur"]) for e in spans)
    assert all(e["dur"] > 0 and e["ts"] >= 0 for e in spans)
    assert abs(sum(e["dur"] for e in spans) - lat_us) <= 1e-6 * max(1e6, lat_us)  # 1e-6 relative (1 µs at least)
    assert spans[0]["ts"] == 0
    for a, b in itertools.pairwise(spans):  # back to back: each starts where the one before ended
        assert b["ts"] == pytest.approx(a["ts"] + a["dur"], abs=2e-3)
    assert spans[-1]["ts"] + spans[-1]["dur"] == pytest.approx(lat_us, abs=1e-6 * max(1e6, lat_us))
    # instants: one commit per block (or token, cloud-only) ending at the caption's length; one decision per block
    commits = [e for e in instants if e["name"].startswith("commit")]
    gates = [e for e in instants if e["name"].startswith("gate")]
    assert commits and commits[-1]["args"]["committed"] == row["n_tokens"]
    assert sum(int(e["name"].split()[1]) for e in commits) == row["n_tokens"]
    if row["k"] == 0:
        assert not gates
    else:
        assert len(gates) == row["blocks"]
        assert sum(e["args"]["escalate"] for e in gates) == row["escalations"]
        assert {e["name"] for e in gates} <= {"gate: escalate", "gate: keep"}
    assert all(0 <= e["ts"] <= lat_us + 1e-3 for e in instants)


# --- the library function, against schedule_features and the closed form ---------------------------------------
def _policies(max_new):
    out = [drafter_only(max_new), cloud_only(max_new)]
    for k, gate, privacy, cache in [(5, "entropy:2.5", "features", "stateful"), (3, "always", "token-only", "stateless"),
                                    (5, "always", "raw", "stateful"), (8, "never", "features", "stateless")]:
        out.append(Policy(k=k, gate=parse_gate(gate), gate_spec=gate, accept=Accept.parse("rank:20"), bonus=True,
                          privacy=privacy, cloud_cache=cache, max_new_tokens=max_new))
    return out


@pytest.fixture(scope="module")
def real_replayer():
    return Replayer(load_trace(REAL))


@pytest.mark.parametrize("which", ["real", "synthetic"])
def test_event_features_sum_to_the_schedule_and_spans_to_the_latency(which, real_replayer, small_trace):
    rp = real_replayer if which == "real" else Replayer(small_trace)
    max_new = rp.trace.manifest["decoding"]["max_new_tokens"]
    cost = fit_costs(rp.trace.timings)
    theta = cost_vector(cost, Network(rtt_s=0.05))
    gate_theta = cost_vector(CostModel(gate_s=0.003), Network(rtt_s=0.05))
    for pol in _policies(max_new):
        rep = rp.replay(pol)
        assert rep.covered.sum() >= 2, pol
        for uid, r, tot in zip(rep.utt_ids, rep.runs, rep.total):
            if r is None:
                continue
            utt = rp._utts[uid]
            inc = event_features(r, pol, utt)
            assert inc.shape == (len(r.events) + 1, tot.size)
            np.testing.assert_array_equal(inc.sum(0), tot)
            np.testing.assert_array_equal(inc.sum(0), schedule_features(r, pol, utt)[0])
            for th in (theta, gate_theta):
                spans, instants = run_timeline(r, pol, utt, th)
                want = float(tot @ th)
                durs = np.array([s.dur_s for s in spans])
                assert (durs > 0).all()
                assert durs.sum() == pytest.approx(want, rel=1e-9)
                starts = np.array([s.start_s for s in spans])
                np.testing.assert_allclose(starts, np.concatenate([[0.0], np.cumsum(durs)[:-1]]), rtol=0, atol=1e-12)
                n_gate_spans = sum(s.name == "gate" for s in spans)
                n_decisions = sum(s.name.startswith("gate") for s in instants)
                assert n_decisions == (0 if pol.k == 0 else r.blocks)
                assert n_gate_spans == (n_decisions if th is gate_theta else 0)  # a free gate: an instant, no span


def test_a_merged_pass_is_one_span_on_the_real_trace(real_replayer):
    """The first (stateful) call opens the session: prompt and block in one prefill pass, shown as one span whose
    parts (the prompt's prefill, the block's tokens at the prefill slope) are named in its args."""
    rp = real_replayer
    pol = Policy(k=5, gate=parse_gate("always"), gate_spec="always", accept=Accept.parse("rank:20"), bonus=True,
                 privacy="features", cloud_cache="stateful", max_new_tokens=32)
    rep = rp.replay(pol)
    uid, r = next((u, x) for u, x in zip(rep.utt_ids, rep.runs) if x is not None)
    cost = fit_costs(rp.trace.timings)
    spans, _ = run_timeline(r, pol, rp._utts[uid], cost_vector(cost, Network()))
    merged = [s for s in spans if s.name == "cloud prefill + verify"]
    assert len(merged) == 1 and merged[0].lane == "cloud" and merged[0].args["first"] is True
    a = merged[0].args
    assert a["cloud_prefill_s"] == pytest.approx(cost.cloud_prefill_a + cost.cloud_prefill_b * rp._utts[uid][
        "cloud_prompt_tokens"])
    assert merged[0].dur_s == pytest.approx(a["cloud_prefill_s"] + a["cloud_verify_s"])
    # the pass's verify part: the unsent context and the block at the prefill's per-token cost, no call of its own
    first = next(ev for ev in r.events if type(ev).__name__ == "Verify")
    assert a["cloud_verify_s"] == pytest.approx(cost.cloud_prefill_b * (first.pending + first.n), abs=1e-12)
    assert a["cloud_verify_s"] >= 0
    later = [s for s in spans if s.name == "verify"]
    assert len(later) == r.escalations - 1 and all(s.args["first"] is False for s in later)


def test_a_negative_priced_step_is_refused(real_replayer):
    """A cost model whose slope makes a verify pass negative cannot be drawn: a clear error, not a wrong picture."""
    rp = real_replayer
    pol = Policy(k=3, gate=parse_gate("always"), gate_spec="always", accept=Accept.parse("rank:20"), bonus=True,
                 privacy="features", cloud_cache="stateful", max_new_tokens=32)
    rep = rp.replay(pol)
    uid, r = next((u, x) for u, x in zip(rep.utt_ids, rep.runs) if x is not None)
    with pytest.raises(UserError, match="verify_c"):
        CostModel(verify_a=0.01, verify_c=-0.01)  # refused where it is made ...
    bad = cost_vector(CostModel(verify_a=0.01), Network())
    bad[FI["verify_ctx"]] = -0.01  # ... and a hand-made cost vector that slips through is refused when drawn
    with pytest.raises(UserError, match="below zero"):
        run_timeline(r, pol, rp._utts[uid], bad)
