"""`validate`'s per-event alignment and its repeat statistics, without models: stretch types written out by
hand, live stretches from a made-up clock, simulated stretches on the bundled trace adding up to the closed form,
and the bootstrap summary of made-up cells (the live end-to-end run is in tests/test_live_run.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from sectrace.protocol import Commit, Draft, GateCall, Prefill, Verify, drafter_only
from sectrace.validate import events as E
from sectrace.validate import stats

# A stateful k=3 caption: a first block corrected at position 1, a kept block, a block accepted with a bonus.
EVENTS = [Prefill(), Draft(0), Draft(1), Draft(2), GateCall(3), Verify(3, 0, 0, 0, True, 1, 1, 0), Commit(2, 2),
          Draft(2), Draft(3), GateCall(2), Commit(2, 4),
          Draft(4), GateCall(1), Verify(1, 4, 2, 3, False, 1, 0, 1), Commit(2, 6)]
TYPES = ["edge prefill", "edge prefill", "draft step", "draft step", "gate", "verify call (opens session)",
         "verify call (opens session)", "resync draft", "draft step", "gate", "gate", "draft step", "gate",
         "verify call", "verify call", "caption end"]


class _Pol:
    k, cloud_cache = 3, "stateful"


def test_stretch_types_follow_the_events():
    assert E.event_types(EVENTS, _Pol()) == TYPES
    stateless = type("P", (), {"k": 3, "cloud_cache": "stateless"})()
    assert E.event_types(EVENTS, stateless)[5] == "verify call (stateless)"


def test_same_events_tells_types_apart():
    assert E.same_events(EVENTS, list(EVENTS))
    assert not E.same_events([Draft(3)], [GateCall(3)])  # equal as tuples, not as events
    assert not E.same_events(EVENTS, EVENTS[:-1])


def _call(start, sent, received, end, ok, compute_ms, queue_ms):
    """Stands in for live.client.CallTimes (the live extra is not needed here; the end-to-end test uses the real one)."""
    return SimpleNamespace(start=start, sent=sent, received=received, end=end, ok=ok, compute_ms=compute_ms,
                           queue_ms=queue_ms)


def _live(latency=1.0):
    """A made-up clock: each event 0.05 s after the one before; the two calls start 0.01 s after their gate."""
    times = [0.05 * (i + 1) for i in range(len(EVENTS))]
    calls = [_call(times[4] + 0.01, times[4] + 0.012, times[5] - 0.002, times[5] - 0.001, True, 20.0, 1.0),
             _call(times[12] + 0.01, times[12] + 0.011, times[13] - 0.003, times[13] - 0.001, True, 5.0, 0.0)]
    run_ = SimpleNamespace(events=EVENTS)
    return SimpleNamespace(run=run_, latency_s=latency, marks=list(zip(times, EVENTS)), call_times=calls), times


def test_live_stretches_add_up_and_split_the_gate_off_each_call():
    live, times = _live()
    rows = E.live_stretches(live, TYPES)
    assert sum(r["live_s"] for r in rows) == pytest.approx(1.0, abs=1e-12)
    gate = [r for r in rows if r["event"] == "gate"]
    assert sum(r["live_s"] for r in gate) == pytest.approx(2 * 0.05 + 0.05 + 2 * 0.01 + 0.05)
    opens = [r for r in rows if r["event"] == "verify call (opens session)"]
    assert opens[0]["live_s"] == pytest.approx(0.04) and opens[0]["live_roundtrip_s"] == pytest.approx(0.036)
    assert opens[0]["live_service_s"] == pytest.approx(0.021)
    assert sum(r["count"] for r in rows if r["event"] == "edge prefill") == 1  # the first draft is the prefill's
    assert sum(r["count"] for r in rows if r["event"] == "draft step") == 4
    assert [r["event"] for r in rows][-1] == "caption end" and rows[-1]["live_s"] == pytest.approx(1.0 - times[-1])


@pytest.fixture(scope="module")
def sample():
    from sectrace.gates import parse_policy
    from sectrace.simulate import Network, Replayer, cost_vector, fit_costs
    from sectrace.trace import load_trace, sample_trace_path

    tr = load_trace(sample_trace_path())
    theta = cost_vector(fit_costs(tr.timings), Network(rtt_s=0.05, up_Bps=2.5e6, down_Bps=6.25e6,
                                                       overhead_bytes=246))
    utts = {r["utt_id"]: r for r in tr.utterances.iter_rows(named=True)}
    return Replayer(tr), theta, utts, parse_policy


@pytest.mark.parametrize("spec", ["k=5 gate=always accept=top1 token-only",
                                  "k=5 gate=entropy:2.5 accept=rank:20 features",
                                  "k=3 gate=always accept=top1 token-only stateless", "edge-only", "cloud-only"])
def test_simulated_stretches_add_up_to_the_closed_form(sample, spec):
    from sectrace.protocol import cloud_only
    from sectrace.simulate import latency

    rp, theta, utts, parse_policy = sample
    pol = {"edge-only": drafter_only(64), "cloud-only": cloud_only(64)}.get(spec) or parse_policy(spec, 64)
    rep = rp.replay(pol)
    seen = set()
    for i, (uid, run_) in enumerate(zip(rep.utt_ids, rep.runs)):
        if run_ is None:
            continue
        types = E.event_types(run_.events, pol)
        rows = E.sim_stretches(run_, pol, utts[uid], theta, types)
        assert sum(r["sim_s"] for r in rows) == pytest.approx(float(latency(rep.total[i:i + 1], theta)[0]), abs=1e-9)
        net = sum(r["sim_network_s"] for r in rows)
        assert net >= 0.05 * (run_.escalations if pol.k else 1) - 1e-12  # each message pays half the RTT both ways
        assert all(r["sim_s"] == 0 for r in rows if r["event"] in ("gate", "caption end"))  # free gates, no tail
        seen |= set(types)
    if pol.k == 0:
        assert seen == {"cloud stream start", "cloud step"}
    elif pol.gate_spec == "never":
        assert seen == {"edge prefill", "draft step", "gate", "caption end"}
    else:
        assert "resync draft" in seen and any(t.startswith("verify call") for t in seen)


def _cells(errs_by_condition, reps=(1.0, 1.02, 0.98)):
    """Runs whose latencies are ``reps`` × a cell's median and whose prediction is (1 + error) × it."""
    rows, seq = [], 0
    for (rtt, pol), errs in errs_by_condition.items():
        for u, e in enumerate(errs):
            for r in reps:
                rows.append({"rtt_s": rtt, "policy": pol, "utt_id": f"u{u}", "latency_s": 2.0 * r, "ttft_s": 0.5 * r,
                             "predicted_latency_s": 2.0 * (1 + e), "predicted_ttft_s": 0.5 * (1 + e),
                             "caption_match": True, "seq": seq})
                seq += 1
    return pl.DataFrame(rows)


def test_repeats_give_medians_bias_intervals_and_the_noise_floor():
    df = _cells({(0.02, "a"): [0.01, -0.01, 0.03, 0.005], (0.05, "a"): [-0.04, -0.03, -0.05, -0.02]})
    cell = stats.cells(df)
    assert cell["repeats"].to_list() == [3] * 8 and cell["latency_s"].to_list() == [2.0] * 8
    assert cell["spread"].to_list() == pytest.approx([0.02] * 8)  # |1.02 − 1| and |0.98 − 1| around the median
    cond = stats.conditions(cell)
    a, b = cond.row(0, named=True), cond.row(1, named=True)
    assert a["bias_latency"] == pytest.approx(0.00875) and a["median_ape_latency"] == pytest.approx(0.01)
    assert b["bias_latency"] == pytest.approx(-0.035) and b["noise"] == pytest.approx(0.02)
    for c in (a, b):
        lo, hi = c["bias_latency_ci"]
        assert lo < c["bias_latency"] < hi
    t = stats.targets(cell, cond)
    assert t["median_ape_latency"]["value"] == pytest.approx(0.025) and not t["median_ape_latency"]["met"]
    assert t["median_ape_ttft"]["met"]  # 2.5 % under 5 %
    assert not t["abs_bias_latency"]["met"] and t["abs_bias_latency"]["worst"]["rtt_s"] == 0.05
    n = stats.noise(cell)
    assert n["noise_repeats"] == pytest.approx(0.02) and n["noise_repeats_ci"] == pytest.approx([0.02, 0.02])


def test_one_run_per_cell_has_no_noise_floor_and_one_utterance_no_interval():
    cell = stats.cells(_cells({(0.02, "a"): [0.01]}, reps=(1.0,)))
    assert cell["spread"].to_list() == [None]
    assert stats.noise(cell)["noise_repeats"] is None
    cond = stats.conditions(cell)
    assert cond["bias_latency_ci"].to_list() == [[None, None]]
    t = stats.targets(cell, cond)
    assert t["abs_bias_latency"]["met"] and not t["abs_bias_latency"]["ci_within"]  # met, but unmeasured spread


def test_a_mismatched_caption_is_not_timed():
    df = _cells({(0.02, "a"): [0.01, 0.5]}).with_columns(
        caption_match=pl.col("utt_id") == "u0")
    assert stats.cells(df)["utt_id"].to_list() == ["u0"]
    assert np.isclose(stats.cells(df)["error_latency"][0], 0.01)


def test_no_timed_run_leaves_the_targets_unmeasured():
    df = _cells({(0.02, "a"): [0.01, 0.02]}).with_columns(caption_match=pl.lit(False))
    cell = stats.cells(df)
    cond = stats.conditions(cell)
    assert cell.is_empty() and cond.is_empty()
    t = stats.targets(cell, cond)
    assert all(t[k]["value"] is None and not t[k]["met"] for k in t)
    assert stats.noise(cell)["noise_repeats"] is None


@pytest.mark.parametrize("flag", ["--repeats", "--calibrations"])
def test_validate_refuses_fewer_than_one_repeat_or_calibration(flag, tmp_path):
    from click.testing import CliRunner

    from sectrace.cli import main
    from sectrace.trace import sample_trace_path

    r = CliRunner().invoke(main, ["validate", str(sample_trace_path()), "--drafter", "d", "--verifier", "v", flag, "0",
                                  "--out", str(tmp_path / "v.parquet"), "--dry-run"])
    assert r.exit_code == 2 and "must be at least 1" in r.output and "Traceback" not in r.output
