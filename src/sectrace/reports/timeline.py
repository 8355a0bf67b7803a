"""Simulated runs as a Chrome / Perfetto trace (JSON "traceEvents"), opened in chrome://tracing or ui.perfetto.dev.

One run (a policy on an utterance) is one process of the trace, its spans on three named threads
(edge, network, cloud); several runs are several processes, each from t = 0, so runs line up for
comparison one above the other. The closed-form engine plays events back to back on one device,
so a run's spans follow one another; instants mark commits and gate decisions. A fleet run
(``fleet_trace``) has one thread per device and per cloud server, at the SimPy engine's times.
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
#: How several runs share one trace's clock (docs/reports.md): each starts at t = 0 in its own process.
LAYOUT = "each run from t = 0 in its own process (pid), one above the other"


@dataclass
class Span:
    lane: str
    name: str
    start_s: float
    dur_s: float
    args: dict = field(default_factory=dict)


@dataclass
class TimelineRun:
    """One (policy, utterance) run: its process label, spans, instants and provenance."""

    label: str
    spans: list[Span]
    instants: list[Span]
    meta: dict


def _us(t_s: float) -> float:
    return round(t_s * 1e6, 3)


def _process(pid: int, name: str, threads: dict[str, int], sort_index: int | None = None) -> list[dict]:
    """Metadata events that make Perfetto label a process and its threads, in this order."""
    ev = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "ts": 0, "args": {"name": name}},
          {"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "ts": 0,
           "args": {"sort_index": pid if sort_index is None else sort_index}}]
    for thread, tid in threads.items():
        ev.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "ts": 0, "args": {"name": thread}})
        ev.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "ts": 0,
                   "args": {"sort_index": tid}})
    return ev


def complete(name: str, cat: str, pid: int, tid: int, start_s: float, dur_s: float, args: dict) -> dict:
    """A complete event ("X"): a span of ``dur_s`` from ``start_s``, in microseconds. Its end is rounded, not its
    length, so a span that starts where another ends does not overlap it by a rounding (Perfetto nests spans
    of one thread by their ends)."""
    ts = _us(start_s)
    return {"name": name, "cat": cat, "ph": "X", "pid": pid, "tid": tid, "ts": ts,
            "dur": round(_us(start_s + dur_s) - ts, 3), "args": args}


def instant(name: str, cat: str, pid: int, tid: int, t_s: float, args: dict) -> dict:
    """An instant event ("i") scoped to its thread: a gate decision or a commit on that lane."""
    return {"name": name, "cat": cat, "ph": "i", "s": "t", "pid": pid, "tid": tid, "ts": _us(t_s), "args": args}


def chrome_trace(spans: list[Span], instants: list[Span] = (), meta: dict | None = None,
                 process: str = "sectrace run") -> dict:
    """One run in the Trace Event Format: complete events ("X") in microseconds, lanes as named threads."""
    return chrome_trace_runs([TimelineRun(process, list(spans), list(instants), meta or {})])


def chrome_trace_runs(runs: list[TimelineRun]) -> dict:
    """Several runs, one process each (pid 1, 2, … in the order given), every one from t = 0.

    ``otherData``: one run's provenance as it is; with several, the fields every run shares, and
    ``runs``, each run's own fields with its ``pid``."""
    ev: list[dict] = []
    for pid, r in enumerate(runs, start=1):
        ev += _process(pid, r.label, LANES)
        for s in r.spans:
            if s.lane not in LANES:
                raise ValueError(f"unknown lane {s.lane!r}")
            ev.append(complete(s.name, s.lane, pid, LANES[s.lane], s.start_s, s.dur_s, s.args))
        for s in r.instants:
            ev.append(instant(s.name, s.lane, pid, LANES[s.lane], s.start_s, s.args))
    if len(runs) == 1:
        other = dict(runs[0].meta)
    else:
        keys = [k for k in runs[0].meta if all(k in r.meta and r.meta[k] == runs[0].meta[k] for r in runs)]
        other = {k: runs[0].meta[k] for k in keys}
        other["layout"] = LAYOUT
        other["runs"] = [{"pid": pid, "label": r.label, **{k: v for k, v in r.meta.items() if k not in keys}}
                         for pid, r in enumerate(runs, start=1)]
    return {"traceEvents": ev, "displayTimeUnit": "ms", "otherData": other}


def write_chrome_trace(path: Path, trace: dict) -> Path:
    return write_json(trace, path)


def _policy_named(policy: str, sub: pl.DataFrame, gates, cache: dict):
    if policy not in cache:
        from .privacy import rebuild_policies

        pols, notes = rebuild_policies(sub, gates)
        if policy not in pols:
            raise UserError(notes[0] if notes else f"cannot rebuild policy {policy!r} from the results")
        cache[policy] = pols[policy]
    return cache[policy]


def timeline_spans(tr, results: pl.DataFrame, policy: str, utt: str, config: int, gates=None, _cache=None):
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
    pol = _policy_named(policy, sub, gates, {} if _cache is None else _cache)
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


def pick_runs(results: pl.DataFrame, policies, utts, config: int) -> tuple[list[tuple[str, str]], list[str]]:
    """The (policy, utterance) pairs to draw, policies outer, in the results' order, and notes on those left out.

    ``policies`` and ``utts`` are lists of names; ``all`` in either stands for every one in the results.
    Named policies and utterances must exist. Of several pairs, coverage misses are left out and
    counted in a note; a single pair that misses is refused (one sentence, from :func:`timeline_spans`)."""
    at = results.filter(pl.col("config") == config)
    if at.height == 0:
        n = results["config"].n_unique()
        raise UserError(f"no configuration {config} in the results; give --config 0 to {n - 1}")
    every_pol = at["policy"].unique(maintain_order=True).to_list()
    every_utt = at["utt_id"].unique(maintain_order=True).to_list()
    pols = every_pol if "all" in policies else list(dict.fromkeys(policies))
    names = every_utt if "all" in utts else list(dict.fromkeys(utts))
    if "all" not in utts:
        unknown = [u for u in names if u not in set(every_utt)]
        if unknown:
            raise UserError(f"no utterance {unknown[0]!r} in the results; utterances there: "
                            f"{', '.join(every_utt[:6])}{' …' if len(every_utt) > 6 else ''} (or --utt all)")
    pairs = [(p, u) for p in pols for u in names]
    notes = []
    if len(pairs) > 1:
        cov = set(at.filter(pl.col("covered")).select("policy", "utt_id").iter_rows())
        missed = [x for x in pairs if x not in cov]
        if len(missed) == len(pairs):
            raise UserError(f"none of these {len(pairs)} runs stayed in the explored trie (coverage misses, e.g. "
                            f"{missed[0][1]!r} under {missed[0][0]!r}); choose other policies or utterances")
        pairs = [x for x in pairs if x in cov]
        if missed:
            notes.append(f"{len(missed)} of the {len(pairs) + len(missed)} (policy, utterance) runs left the explored "
                         "trie (coverage misses) and are not drawn")
    return pairs, notes


def timeline_runs(tr, results: pl.DataFrame, pairs, config: int, gates=None) -> list[TimelineRun]:
    """The runs of ``pairs`` ((policy, utterance) from :func:`pick_runs`), each rebuilt and priced on its row."""
    cache: dict = {}
    out = []
    for policy, utt in pairs:
        spans, instants, meta = timeline_spans(tr, results, policy, utt, config, gates, _cache=cache)
        out.append(TimelineRun(f"{policy} · {utt}", spans, instants, meta))
    return out


# --- a fleet run -----------------------------------------------------------------------------------------------
#: Processes of a fleet trace: the devices, and the cloud servers, one thread each.
FLEET_DEVICES, FLEET_SERVERS = 1, 2
_FLEET_CAT = {"uplink": "network", "downlink": "network", "queue": "queue", "cloud": "cloud"}


def fleet_trace(record, devices: int, servers: int, meta: dict | None = None, arrivals: bool = True) -> dict:
    """A fleet run (``simulate.fleet.FleetRecord``) in the Trace Event Format, at the engine's own times.

    Process 1 holds one thread per device (its edge work, links, queueing and time in service, gate
    decisions as instants, each caption's end as an instant); process 2 one thread per cloud server
    (each batch one span, its members in ``args``). Stretches of zero seconds (no queueing) are left out.
    ``arrivals``: mark when a caption arrived, where it waited for its device (Poisson arrivals; played
    back to back, every caption arrives at 0)."""
    ev = _process(FLEET_DEVICES, "edge devices", {f"device {d}": d + 1 for d in range(devices)})
    ev += _process(FLEET_SERVERS, "cloud servers", {f"server {s}": s + 1 for s in range(servers)})
    for d, j, utt, what, start, dur, server in record.device:
        if dur == 0:
            continue
        args = {"utt_id": utt, "utterance": j}
        name = what
        if server is not None:
            args["server"] = server
            name = f"{what} (server {server})"
        ev.append(complete(name, _FLEET_CAT.get(what, "edge"), FLEET_DEVICES, d + 1, float(start), float(dur), args))
    for d, j, utt, t, escalate in record.gates:
        ev.append(instant("gate: escalate" if escalate else "gate: keep", "edge", FLEET_DEVICES, d + 1, float(t),
                          {"utt_id": utt, "utterance": j, "escalate": bool(escalate)}))
    for d, j, utt, arrival, start, finish in record.captions:
        if arrivals and arrival < start:
            ev.append(instant("arrival", "caption", FLEET_DEVICES, d + 1, float(arrival),
                              {"utt_id": utt, "utterance": j}))
        ev.append(instant("caption done", "caption", FLEET_DEVICES, d + 1, float(finish),
                          {"utt_id": utt, "utterance": j, "latency_s": finish - start, "response_s": finish - arrival}))
    for server, start, dur, members in record.batches:
        ev.append(complete(f"batch of {len(members)}", "cloud", FLEET_SERVERS, server + 1, float(start), float(dur),
                           {"size": len(members), "service_s": dur,
                            "members": [{"device": d, "utterance": j, "utt_id": utt, "call": c}
                                        for d, j, utt, c in members]}))
    return {"traceEvents": ev, "displayTimeUnit": "ms",
            "otherData": {**(meta or {}), "engine": "SimPy fleet (queueing, batching, sampled jitter and loss)"}}
