"""Fleet server choice in O(log servers): the heap picks what a scan of every server picks."""

from __future__ import annotations

import numpy as np
import pytest

from sectrace.gates import parse_gate
from sectrace.protocol import Accept, Policy
from sectrace.simulate import Replayer
class _ScanLoad:
    """The pre-heap server choice: scan every server for the least (load, pinned sessions, index)."""

    def __init__(self, servers):
        self.load, self.pinned = [0] * servers, [0] * servers

    def add_load(self, i, d):
        self.load[i] += d

    def add_pin(self, i, d):
        self.pinned[i] += d

    def pick(self):
        return min(range(len(self.load)), key=lambda i: (self.load[i], self.pinned[i]))


def _fleet_runs(stateful):
    from sectrace.simulate import Network, fit_costs
    from sectrace.simulate.fleet import Fleet, plans, simulate_fleet
    from sectrace.trace import load_trace, sample_trace_path

    tr = load_trace(sample_trace_path())
    rp = Replayer(tr)
    pol = Policy(k=3, gate=parse_gate("always"), gate_spec="always", accept=Accept("rank", 20), max_new_tokens=64)
    pl_ = plans(rp, rp.replay(pol))
    net = Network(rtt_s=0.04, jitter="expon(scale=0.003)", loss=0.02)
    return [simulate_fleet(pl_, fit_costs(tr.timings), net, fl, stateful=stateful) for fl in (
        Fleet(devices=30, servers=4, max_batch=3, batch_window_s=0.01, seed=7, arrival_rate=0.3,
              utterances_per_device=5),
        Fleet(devices=25, servers=7, max_batch=2, seed=3))]


@pytest.mark.parametrize("stateful", [True, False])
def test_fleet_server_heap_matches_a_scan_of_every_server(monkeypatch, stateful):
    from sectrace.simulate import fleet

    fast = _fleet_runs(stateful)
    monkeypatch.setattr(fleet, "ServerLoad", _ScanLoad)
    slow = _fleet_runs(stateful)
    for a, b in zip(fast, slow):
        assert a.equals(b)


def test_server_load_heap_survives_many_stale_entries():
    from sectrace.simulate.fleet import ServerLoad

    rng = np.random.default_rng(0)
    heap, scan = ServerLoad(9), _ScanLoad(9)
    for _ in range(5000):
        i = int(rng.integers(9))
        if rng.random() < 0.5:
            d = int(rng.integers(-1, 2))
            heap.add_load(i, d)
            scan.add_load(i, d)
        else:
            d = int(rng.integers(-1, 2))
            heap.add_pin(i, d)
            scan.add_pin(i, d)
        assert heap.pick() == scan.pick()
    assert len(heap.heap) <= 4 * 9 + 65
