"""Breakdowns and break-even maps that need the simulator's cost model, checked against the results.

What needs the cost model (the overhead breakdown per part, the break-even map) is computed from
simulate's public API, and checked against the latencies in the results so a report never shows a
breakdown of a different run.
"""

from __future__ import annotations

import numpy as np
import polars as pl

FIT_SOURCE = "fitted to the trace's timings"
DEFAULT_SOURCE = "defaults (the study's devices)"


def cost_and_net(tr, row: dict, overhead_bytes: int):
    """The cost model and network a results row was priced with, when the results say enough to rebuild them."""
    from ..simulate import CostModel, Network, fit_costs

    src = row.get("cost_source")
    if src == FIT_SOURCE:
        cost = fit_costs(tr.timings)
    elif src == DEFAULT_SOURCE:
        cost = CostModel()
    else:
        return None, None, (f"the results were priced with a cost model the results file does not record ({src}); "
                            "re-run simulate without cost overrides to get the breakdown and timelines")
    return cost, Network(rtt_s=row["rtt_s"], up_Bps=row["up_Bps"], down_Bps=row["down_Bps"],
                         overhead_bytes=overhead_bytes), ""


def result_policies(results: pl.DataFrame, gates=None) -> dict:
    """The policies of the results by label; a learned gate only from a file the user passed (``gates``)."""
    from .privacy import rebuild_policies

    pols, _ = rebuild_policies(results, gates)
    return pols


def overhead_breakdown(tr, results: pl.DataFrame, config: int, overhead_bytes: int = 100, gates=None):
    """Mean seconds per part per policy at one configuration, or (None, why)."""
    from ..simulate import Replayer, breakdown, cost_vector

    sub = results.filter(pl.col("config") == config)
    cost, net, why = cost_and_net(tr, sub.row(0, named=True), overhead_bytes)
    if cost is None:
        return None, why
    theta = cost_vector(cost, net)
    rp = Replayer(tr)
    rows = []
    for name, pol in result_policies(sub, gates).items():
        rep = rp.replay(pol)
        ok = rep.covered
        parts = breakdown(rep.total[ok], theta)
        got = sub.filter(pl.col("policy") == name).select("utt_id", "latency_s")
        want = dict(zip(got["utt_id"].to_list(), got["latency_s"].to_list()))
        total = sum(parts.values())
        ids = [u for u, c in zip(rep.utt_ids, ok) if c]
        if any(abs(t - want[u]) > 1e-6 * max(1.0, want[u]) for u, t in zip(ids, total) if want.get(u) is not None):
            return None, ("the breakdown recomputed from the trace does not add up to the results' latencies (the "
                          "results were simulated with other costs, e.g. --gate-cost, --overhead or --edge-speedup); "
                          "it is left out rather than shown wrong")
        rows.append({"policy": name, **{p: float(np.mean(v)) if len(v) else float("nan") for p, v in parts.items()}})
    r = sub.row(0, named=True)
    note = (f"Configuration {config}: RTT {1000 * r['rtt_s']:g} ms; costs {r['cost_source']}. Parts add up to each "
            "utterance's simulated latency (checked).")
    return pl.DataFrame(rows), note


def break_even(tr, results: pl.DataFrame, policies: list[str], overhead_bytes: int = 100, n: int = 41,
               rtts=None, speeds=None, gates=None):
    """Latency of each hybrid policy relative to edge-only over a grid of RTT × edge speed-up, or (None, why).

    Latency is linear in the schedule features, so the grid is one matrix product per policy:
    the mean features of the covered utterances against a cost vector per grid point.
    """
    from dataclasses import replace

    from ..simulate import Network, Replayer, cost_vector

    sub = results.filter(pl.col("config") == 0)
    row = sub.row(0, named=True)
    cost, net, why = cost_and_net(tr, row, overhead_bytes)
    if cost is None:
        return None, why
    pols = result_policies(results, gates)
    if "edge-only" not in pols:
        return None, "the results hold no edge-only baseline to break even against"
    rtts = np.logspace(-3, 0, n) if rtts is None else np.asarray(rtts, dtype=float)
    speeds = np.logspace(np.log10(0.25), np.log10(16), n) if speeds is None else np.asarray(speeds, dtype=float)
    thetas = np.stack([np.stack([cost_vector(replace(cost.scaled(edge_speedup=s), source=cost.source),
                                             Network(rtt_s=r, up_Bps=net.up_Bps, down_Bps=net.down_Bps,
                                                     overhead_bytes=overhead_bytes))
                                 for r in rtts]) for s in speeds])  # (speeds, rtts, features)
    rp = Replayer(tr)
    edge = rp.replay(pols["edge-only"])
    out = {}
    for name in policies:
        if name not in pols:  # a learned gate whose file was not passed: left out, with a note elsewhere
            continue
        rep = rp.replay(pols[name])
        ok = rep.covered & edge.covered
        if not ok.any():
            continue
        lat_h = thetas @ rep.total[ok].mean(axis=0)
        lat_e = thetas @ edge.total[ok].mean(axis=0)
        out[name] = lat_h / lat_e
    note = (f"Mean latency of each policy over edge-only's, at uplink {net.up_Bps * 8 / 1e6:g} Mbit/s, downlink "
            f"{net.down_Bps * 8 / 1e6:g} Mbit/s, costs {cost.source}; the edge scaled by the speed-up (cloud fixed).")
    return (rtts, speeds, out, row["rtt_s"]), note
