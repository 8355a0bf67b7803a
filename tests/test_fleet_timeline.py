"""Fleet timelines: what the SimPy engine recorded, at its own times, as a Chrome/Perfetto trace.

With one device and no noise the device's stretches add up to the closed form's latency; on a crowded
fleet no server runs two batches at once, no batch exceeds the max batch, and every request's time in
service is the span of the batch that carried it.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict

import pytest
from click.testing import CliRunner
from conftest import synthetic_replayer

from sectrace.cli import main
from sectrace.gates import parse_gate
from sectrace.protocol import Accept, GateCall, Policy, Verify, cloud_only
from sectrace.reports.timeline import fleet_trace
from sectrace.simulate import CostModel, Network, fit_costs, latency
from sectrace.simulate.fleet import Fleet, FleetRecord, plans, simulate_fleet
from sectrace.simulate.timing import cost_vector
from sectrace.trace import sample_trace_path


@pytest.fixture(scope="module")
def rp():
    return synthetic_replayer()


def _policy(k, gate="entropy:2.5", cache="stateful"):
    if k == 0:
        return cloud_only(64)
    return Policy(k=k, gate=parse_gate(gate), gate_spec=gate, accept=Accept.parse("rank:20"), bonus=True,
                  privacy="features", cloud_cache=cache, max_new_tokens=64)


def _by_caption(rec: FleetRecord):
    out = defaultdict(list)
    for d, j, utt, what, start, dur, server in rec.device:
        out[(d, j)].append((what, start, dur, server, utt))
    return out


@pytest.mark.parametrize("k,gate,cache", [(3, "entropy:2.5", "stateful"), (5, "always", "stateless"),
                                          (0, "always", "stateful")])
def test_one_device_spans_add_up_to_the_closed_form(rp, k, gate, cache):
    pol = _policy(k, gate, cache)
    rep = rp.replay(pol)
    cost = fit_costs(rp.trace.timings)
    net = Network(rtt_s=0.04)
    rec = FleetRecord()
    df = simulate_fleet(plans(rp, rep), cost, net, Fleet(), stateful=cache == "stateful", record=rec)
    closed = latency(rep.total, cost_vector(cost, net))[rep.covered]
    runs = [r for r in rep.runs if r is not None]
    by = _by_caption(rec)
    assert len(by) == len(closed) == df.height
    for j, (want, r) in enumerate(zip(closed, runs)):
        spans = by[(0, j)]
        assert all(dur >= 0 for _, _, dur, _, _ in spans)
        assert sum(dur for _, _, dur, _, _ in spans) == pytest.approx(want, rel=1e-9, abs=1e-12)
        start = rec.captions[j][4]
        for a, b in itertools.pairwise([(start, 0.0)] + [(s, d) for _, s, d, _, _ in spans]):  # back to back
            assert b[0] == pytest.approx(a[0] + a[1], abs=1e-9)
        assert rec.captions[j][5] - start == pytest.approx(want, rel=1e-9, abs=1e-12)
        calls = sum(type(e) in (Verify,) for e in r.events) if k else 1
        assert [w for w, *_ in spans].count("uplink") == calls == [w for w, *_ in spans].count("cloud")
        assert all(dur == 0 for w, _, dur, _, _ in spans if w == "queue")  # alone on the server: no queueing
        gates = [g for g in rec.gates if g[1] == j]
        assert len(gates) == sum(type(e) is GateCall for e in r.events)
        assert sum(g[4] for g in gates) == (r.escalations if k else 0)  # cloud-only decoding asks no gate
        end = rec.captions[j][5]
        assert all(start <= g[3] <= end + 1e-9 for g in gates)


def test_a_crowded_fleet_batches_within_bounds(rp):
    pol = _policy(3, "always")
    rec = FleetRecord()
    fl = Fleet(devices=30, servers=2, max_batch=4, batch_window_s=0.05, utterances_per_device=2)
    df = simulate_fleet(plans(rp, rp.replay(pol)), CostModel(), Network(rtt_s=0.02), fl, record=rec)
    assert df.height == 60 and rec.batches
    sizes = [len(m) for *_, m in rec.batches]
    assert max(sizes) <= fl.max_batch and max(sizes) > 1  # batching happened, never beyond the max batch
    per_server = defaultdict(list)
    for server, start, dur, members in rec.batches:
        assert dur > 0
        per_server[server].append((start, dur))
    for spans in per_server.values():  # a server runs one batch at a time
        spans.sort()
        for (s0, d0), (s1, _) in itertools.pairwise(spans):
            assert s1 >= s0 + d0 - 1e-9
    # every request's time in service is its batch's span, on the server it queued for
    served = {(d, j, c): (server, start, dur) for server, start, dur, ms in rec.batches for d, j, _, c in ms}
    by = _by_caption(rec)
    n_cloud = 0
    for (d, j), spans in by.items():
        assert all(dur >= 0 for _, _, dur, _, _ in spans)
        cloud = [(s, dur, server) for w, s, dur, server, _ in spans if w == "cloud"]
        for c, (s, dur, server) in enumerate(cloud):
            assert served[(d, j, c)] == (server, s, dur)
        n_cloud += len(cloud)
        row = df.filter((df["device"] == d)).row(j, named=True)
        assert sum(dur for _, _, dur, _, _ in spans) == pytest.approx(row["latency_s"], rel=1e-9)
        assert sum(dur for w, _, dur, _, _ in spans if w == "queue") == pytest.approx(row["queue_s"], abs=1e-9)
    assert n_cloud == len(served) == sum(sizes) == int(df["cloud_calls"].sum())
    assert df["queue_s"].max() > 0


def test_recording_changes_nothing(rp):
    pol = _policy(5)
    pl_ = plans(rp, rp.replay(pol))
    fl = Fleet(devices=8, servers=1, max_batch=3, arrival_rate=0.2, seed=4)
    net = Network(rtt_s=0.03, jitter="expon(scale=0.004)", loss=0.05)
    a = simulate_fleet(pl_, CostModel(), net, fl)
    b = simulate_fleet(pl_, CostModel(), net, fl, record=FleetRecord())
    assert a.equals(b)


def test_fleet_trace_json(rp):
    rec = FleetRecord()
    fl = Fleet(devices=5, servers=2, max_batch=2, batch_window_s=0.01, utterances_per_device=2)
    simulate_fleet(plans(rp, rp.replay(_policy(3))), CostModel(), Network(), fl, record=rec)
    d = json.loads(json.dumps(fleet_trace(rec, 5, 2, {"policy": "p"})))
    ev = d["traceEvents"]
    assert all({"ph", "ts", "pid", "tid"} <= set(e) for e in ev)
    assert all(e["dur"] > 0 for e in ev if e["ph"] == "X")
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev if e["name"] == "thread_name"}
    assert sorted(threads.values()) == sorted([f"device {i}" for i in range(5)] + ["server 0", "server 1"])
    gates = [e for e in ev if e["ph"] == "i" and e["name"].startswith("gate")]
    assert len(gates) == len(rec.gates) and all(e["s"] == "t" and e["pid"] == 1 for e in gates)
    batches = [e for e in ev if e["pid"] == 2 and e["ph"] == "X"]
    assert len(batches) == len(rec.batches) and all(len(e["args"]["members"]) <= 2 for e in batches)
    assert d["otherData"]["policy"] == "p"


def test_fleet_cli_writes_a_timeline(tmp_path):
    out = tmp_path / "fleet.json"
    args = ["fleet", str(sample_trace_path()), "--k", "3", "--gate", "entropy:2.5", "--devices", "3", "--servers",
            "1", "--utterances-per-device", "2", "--batch-window", "20ms", "--timeline", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    ev = d["traceEvents"]
    assert all({"ph", "ts", "pid", "tid"} <= set(e) for e in ev) and all(e["dur"] >= 0 for e in ev if "dur" in e)
    assert d["otherData"]["devices"] == 3 and d["otherData"]["policy"].startswith("k=3")
    done = [e for e in ev if e["name"] == "caption done"]
    assert len(done) == 6
    tracks = defaultdict(list)
    for e in ev:
        if e["ph"] == "X":
            tracks[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    assert len(tracks) == 4  # three devices, one server
    for spans in tracks.values():  # spans of one track follow one another, rounding included (Perfetto nests by ends)
        spans.sort()
        assert all(b[0] >= a[1] - 1e-6 for a, b in itertools.pairwise(spans))  # µs, to float error
    r = CliRunner().invoke(main, args)  # fsio: no silent replacement
    assert r.exit_code == 2 and "--force" in r.output
    r = CliRunner().invoke(main, [*args, "--arrival-rate", "0.1,0.2", "--force"])
    assert r.exit_code == 2 and "one --arrival-rate" in r.output
    r = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "fleet.txt")])
    assert r.exit_code == 2 and "fleet.json" in r.output
