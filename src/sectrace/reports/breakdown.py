"""The overhead breakdown and break-even maps of a results file.

The breakdown is read from the per-utterance part times the results hold; the break-even map
prices the results' policies again over RTT × edge speed-up, with the cost model and network each
row records (``simulate.results.from_row``), so results made with any flags can be mapped.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ..errors import UserError
from ..simulate import Replayer, cost_vector
from ..simulate.metrics import PART_COLUMNS
from ..simulate.results import from_row


def cost_and_net(tr, row: dict):
    """The cost model and network a results row was priced with, read from the row (``simulate.results.from_row``:
    every cost coefficient and network field is a column), or (None, None, why) for results that lack them."""

    try:
        setup = from_row(row, with_policy=False)
    except UserError as exc:
        return None, None, str(exc)
    return setup.cost, setup.network, ""


def result_policies(results: pl.DataFrame, gates=None) -> dict:
    """The policies of the results by label; a learned gate only from a file the user passed (``gates``)."""
    from .privacy import rebuild_policies

    pols, _ = rebuild_policies(results, gates)
    return pols


def overhead_breakdown(results: pl.DataFrame, config: int):
    """Mean seconds per part per policy at one configuration, or (None, why).

    The parts are the ``t_<part>_s`` columns simulate wrote for every utterance (they add up to its
    latency), averaged over each policy's covered utterances: read from the results, not recomputed,
    so the breakdown is of the very run the results hold, whatever flags priced it."""

    sub = results.filter((pl.col("config") == config) & pl.col("covered"))
    parts = [c for c in PART_COLUMNS if c in results.columns]
    if not parts:
        return None, ("the results lack the per-part times (t_<part>_s columns): they were written by an older "
                      "sectrace; re-simulate them with `sectrace simulate --out` to get the breakdown")
    if sub.height == 0:
        return None, f"no covered utterance at configuration {config}: nothing to break down"
    total = sub.select(pl.sum_horizontal(parts).alias("sum"), "latency_s")
    bad = total.filter((pl.col("sum") - pl.col("latency_s")).abs() > 1e-6 * pl.max_horizontal(1.0, "latency_s"))
    if bad.height:
        return None, ("the results' per-part times do not add up to their latencies (the file was edited or "
                      "mixes runs); the breakdown is left out rather than shown wrong")
    table = (sub.group_by("policy", maintain_order=True).agg(pl.col(c).mean() for c in parts)
             .rename({c: c[2:-2] for c in parts}))
    r = sub.row(0, named=True)
    note = (f"Configuration {config}: RTT {1000 * r['rtt_s']:g} ms; costs {r.get('cost_source')}. Mean seconds per "
            "caption in each part, from the results' per-utterance times (they add up to each utterance's simulated "
            "latency).")
    return table, note


def break_even(tr, results: pl.DataFrame, policies: list[str], n: int = 41, rtts=None, speeds=None, gates=None):
    """Latency of each hybrid policy relative to edge-only over a grid of RTT × edge speed-up, or (None, why).

    Latency is linear in the schedule features, so the grid is one matrix product per policy:
    the mean features of the covered utterances against a cost vector per grid point.
    """
    from dataclasses import replace


    sub = results.filter(pl.col("config") == 0)
    row = sub.row(0, named=True)
    cost, net, why = cost_and_net(tr, row)
    if cost is None:
        return None, why
    pols = result_policies(results, gates)
    if "edge-only" not in pols:
        return None, "the results hold no edge-only baseline to break even against"
    rtts = np.logspace(-3, 0, n) if rtts is None else np.asarray(rtts, dtype=float)
    speeds = np.logspace(np.log10(0.25), np.log10(16), n) if speeds is None else np.asarray(speeds, dtype=float)
    thetas = np.stack([np.stack([cost_vector(replace(cost.scaled(edge_speedup=s), source=cost.source),
                                             replace(net, rtt_s=float(r)))
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
