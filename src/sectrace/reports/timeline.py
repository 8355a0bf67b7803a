"""One utterance's run as a Chrome / Perfetto trace (JSON "traceEvents"), opened in chrome://tracing or ui.perfetto.dev.

Spans sit on three lanes (edge, network, cloud). The closed-form engine plays events back to
back on one device, so spans follow one another; instants mark commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ..errors import UserError
from ..fsio import write_json
from ..protocol import run
from ..simulate import cost_vector
from ..simulate.spans import run_timeline
from ..trace import TrieSession
from .breakdown import cost_and_net

LANES = {"edge": 1, "network": 2, "cloud": 3}


@dataclass
class Span:
    lane: str
    name: str
    start_s: float
    dur_s: float
    args: dict = field(default_factory=dict)


def chrome_trace(spans: list[Span], instants: list[Span] = (), meta: dict | None = None,
                 process: str = "sectrace run") -> dict:
    """The Trace Event Format: complete events ("X") in microseconds, lanes as named threads."""
    ev = [{"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": process}}]
    for lane, tid in LANES.items():
        ev.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": lane}})
        ev.append({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid, "args": {"sort_index": tid}})
    for s in spans:
        if s.lane not in LANES:
            raise ValueError(f"unknown lane {s.lane!r}")
        ev.append({"name": s.name, "cat": s.lane, "ph": "X", "pid": 1, "tid": LANES[s.lane],
                   "ts": round(s.start_s * 1e6, 3), "dur": round(s.dur_s * 1e6, 3), "args": s.args})
    for s in instants:
        ev.append({"name": s.name, "cat": s.lane, "ph": "i", "s": "t", "pid": 1, "tid": LANES[s.lane],
                   "ts": round(s.start_s * 1e6, 3), "args": s.args})
    return {"traceEvents": ev, "displayTimeUnit": "ms", "otherData": meta or {}}


def write_chrome_trace(path: Path, trace: dict) -> Path:
    return write_json(trace, path)


def timeline_spans(tr, results: pl.DataFrame, policy: str, utt: str, config: int, gates=None):
    """Per-event spans of one utterance's run under one policy and configuration, priced with the cost
    model and network the results row records (``simulate.results.from_row``)."""

    sub = results.filter((pl.col("policy") == policy) & (pl.col("config") == config) & (pl.col("utt_id") == utt))
    if sub.height == 0:
        known = results["policy"].unique(maintain_order=True).to_list()
        raise UserError(f"no results row for policy {policy!r}, utterance {utt!r}, configuration {config}; "
                        f"policies in the results: {', '.join(known[:6])}{' …' if len(known) > 6 else ''}")
    row = sub.row(0, named=True)
    if not row["covered"]:
        raise UserError(f"utterance {utt!r} left the explored trie under {policy!r} (a coverage miss): no run to show")
    cost, net, why = cost_and_net(tr, row)
    if cost is None:
        raise UserError(why)
    theta = cost_vector(cost, net)
    from .privacy import rebuild_policies

    pols, notes = rebuild_policies(sub, gates)
    if policy not in pols:
        raise UserError(notes[0] if notes else f"cannot rebuild policy {policy!r} from the results")
    pol = pols[policy]
    nodes = tr.nodes.filter(pl.col("utt_id") == utt)
    sess = TrieSession(nodes, tr.modes, [c for c in nodes.columns if c.startswith("x_")])
    r = run(sess, pol)
    u = tr.utterances.filter(pl.col("utt_id") == utt).row(0, named=True)
    timed, marks = run_timeline(r, pol, u, theta)
    spans = [Span(x.lane, x.name, x.start_s, x.dur_s, x.args) for x in timed]
    instants = [Span(x.lane, x.name, x.start_s, x.dur_s, x.args) for x in marks]
    t = sum(x.dur_s for x in timed)
    if abs(t - row["latency_s"]) > 1e-6 * max(1.0, row["latency_s"]):
        raise UserError("the timeline recomputed from the trace does not add up to the results' latency (the trace "
                        "differs from the one the results were simulated from); give that trace with --trace")
    meta = {"trace": row.get("trace"), "trace_path": str(tr.path), "policy": policy, "utt_id": utt, "config": config,
            "rtt_s": row["rtt_s"], "up_Bps": row["up_Bps"], "down_Bps": row["down_Bps"],
            "overhead_bytes": net.overhead_bytes, "jitter": net.jitter, "loss": net.loss, "rto_s": net.rto_s,
            "cost_source": row["cost_source"], "trace_sha256": row.get("trace_sha256"), "command": row.get("command"),
            "latency_s": row["latency_s"], "ttft_s": row["ttft_s"],
            "tokens": len(r.tokens), "caption": row.get("caption"), "tool_version": row.get("tool_version"),
            "synthetic": row.get("synthetic"), "engine": "closed-form (events back to back, no queueing)"}
    return spans, instants, meta
