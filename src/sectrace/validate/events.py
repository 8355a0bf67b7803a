"""Where a live run's time goes, event by event, against the simulator's price of the same event.

A live run and the trace's replay of the same utterance and policy execute the same protocol, so when
the captions agree their event lists are the same list. Each event gets the stretch of time that ends
at it (live: from the previous event's timestamp, read from the clock that times the latency; simulated:
what the event adds to ``schedule_features``), so both sides are cut at the same places and each side's
stretches add up to its latency. Grouping the stretches by event type and subtracting says which kind
of event carries the simulator's error, which a whole-run error cannot.

Stretches are typed so that both sides mean the same work by a type:

- the edge prefill is the ``Prefill`` event and the caption's first draft step (the prefill yields the
  first token; the simulator merges them likewise);
- a *resync draft* is the first draft step after a verify that committed a correction or a bonus token:
  the drafter's cache is cropped back and fed the cloud's token first;
- *gate* is the block's hand-over to the gate and its decision, up to the verify call's start (or the
  commit when the block is kept);
- a verify call runs from its start to the reply's judgements and their commit; a live call is split
  further by its own clock (request sent, reply read) and the service's ``compute_ms``/``queue_ms``;
- a commit's own (bookkeeping) time goes to the event that produced its tokens;
- cloud-only decoding: the stream's start (request, cloud prefill, first token down; the simulator
  charges the stream's one down message after the last step, but live it is paid before the first token
  arrives, so it is counted here) and the steps between streamed tokens.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ..protocol import CloudStart, CloudStep, Commit, Draft, Fallback, GateCall, Policy, Prefill, Verify
from ..simulate.replay import FI
from ..simulate.spans import event_features
from ..simulate.timing import PARTS

#: Every stretch type, in the order a caption meets them (the table's order).
EVENT_TYPES = ("edge prefill", "draft step", "resync draft", "gate", "verify call (opens session)", "verify call",
               "verify call (stateless)", "fallback", "cloud stream start", "cloud step", "caption end")
VERIFY_TYPES = ("verify call (opens session)", "verify call", "verify call (stateless)")
_NETWORK = [FI[f] for part in ("uplink", "downlink") for f in PARTS[part]]
_CLOUD = [FI[f] for part in ("cloud_prefill", "cloud_verify", "cloud_decode") for f in PARTS[part]]

#: Live stretches telescope (each is a difference of two reads of one clock), so their sum is the measured
#: latency up to float rounding; the end-to-end test holds them to this (seconds).
SUM_TOLERANCE_S = 1e-6


def event_types(events: list, policy: Policy) -> list[str]:
    """The type of the stretch ending at each event, then one for the stretch after the last event."""
    out: list[str] = []
    after_prefill = after_fix = False
    for ev in events:
        kind = type(ev)
        if kind is Prefill:
            t, after_prefill = "edge prefill", True
        elif kind is Draft:
            t = "edge prefill" if after_prefill else "resync draft" if after_fix else "draft step"
            after_prefill = after_fix = False
        elif kind is GateCall:
            t = "gate"
        elif kind is Verify:
            t = ("verify call (stateless)" if policy.cloud_cache == "stateless" else
                 "verify call (opens session)" if ev.first else "verify call")
            after_fix = bool(ev.corrected or ev.bonus)
        elif kind is Fallback:
            t, after_fix = "fallback", False
        elif kind is CloudStart or (kind is CloudStep and ev.ctx == 0):
            t = "cloud stream start"
        elif kind is CloudStep:
            t = "cloud step"
        elif kind is Commit:
            t = out[-1] if out else "caption end"
        else:
            raise TypeError(f"no stretch type for the event {kind.__name__}")
        out.append(t)
    out.append("cloud stream start" if policy.k == 0 else "caption end")
    return out


def same_events(a: list, b: list) -> bool:
    """Whether two runs made the same events (NamedTuples of different types can compare equal as tuples)."""
    return len(a) == len(b) and all(type(x) is type(y) and tuple(x) == tuple(y) for x, y in zip(a, b))


def _counted(ev) -> bool:
    """Whether an event counts as one of its type: a commit is bookkeeping, and the caption's first draft
    step and first streamed token come out of the prefill they are typed with."""
    kind = type(ev)
    return not (kind is Commit or (kind in (Draft, CloudStep) and ev.ctx == 0))


def live_stretches(live, types: list[str]) -> list[dict]:
    """One row per live stretch: its type, seconds, and for a verify call the round trip and service time.

    ``live`` is a ``LiveRun`` kept with marks; the i-th verify call (``live.call_times``) belongs to the i-th
    ``Verify``/``Fallback`` event, and its start cuts the gate's decision off the call's stretch."""
    calls = iter(live.call_times)
    rows, t_prev = [], 0.0
    for (t, ev), kind in zip(live.marks, types):
        if type(ev) in (Verify, Fallback):
            c = next(calls)
            rows.append({"event": "gate", "count": 0, "live_s": c.start - t_prev})
            rows.append({"event": kind, "count": 1, "live_s": t - c.start, "live_roundtrip_s": c.received - c.sent,
                         "live_service_s": (c.compute_ms + c.queue_ms) / 1e3 if c.ok else 0.0})
        else:
            rows.append({"event": kind, "count": int(_counted(ev)), "live_s": t - t_prev})
        t_prev = t
    rows.append({"event": types[-1], "count": int(types[-1] == "caption end"), "live_s": live.latency_s - t_prev})
    return rows


def sim_stretches(replay_run, policy: Policy, utt: dict, theta: np.ndarray, types: list[str]) -> list[dict]:
    """One row per simulated event (and the caption's tail): its type, seconds, and how many are wire and cloud."""
    inc = event_features(replay_run, policy, utt)
    secs, net, cloud = inc @ theta, inc[:, _NETWORK] @ theta[_NETWORK], inc[:, _CLOUD] @ theta[_CLOUD]
    return [{"event": k, "sim_s": float(s), "sim_network_s": float(n), "sim_cloud_s": float(c)}
            for k, s, n, c in zip(types, secs, net, cloud)]


def run_table(live, replay_run, policy: Policy, utt: dict, theta: np.ndarray) -> pl.DataFrame | None:
    """Per event type of one run: count, live and simulated seconds (and the verify calls' split).

    None where the live run's events are not the replay's (a fallback, or a gate that decided otherwise on
    live signals): there is no event to align with."""
    if replay_run is None or not same_events(live.run.events, replay_run.events):
        return None
    types = event_types(replay_run.events, policy)
    zero = {"count": 0, "live_s": 0.0, "live_roundtrip_s": 0.0, "live_service_s": 0.0}
    lv = pl.DataFrame([{**zero, **r} for r in live_stretches(live, types)])
    sim = pl.DataFrame(sim_stretches(replay_run, policy, utt, theta, types))
    lv = lv.group_by("event").agg(pl.col("count", "live_s", "live_roundtrip_s", "live_service_s").sum())
    sim = sim.group_by("event").agg(pl.col("sim_s", "sim_network_s", "sim_cloud_s").sum())
    order = pl.DataFrame({"event": EVENT_TYPES, "_o": range(len(EVENT_TYPES))})
    return lv.join(sim, on="event", how="full", coalesce=True).join(order, on="event").sort("_o").drop("_o")


def finish(rows: pl.DataFrame) -> pl.DataFrame:
    """Residuals (simulated − live, the sign of the error) and each type's share of its run's error."""
    run_keys = ["seq"]
    return rows.with_columns(residual_s=pl.col("sim_s") - pl.col("live_s")).with_columns(
        share_of_error=pl.col("residual_s") / pl.col("residual_s").sum().over(run_keys),
        pct_of_latency=pl.col("residual_s") / pl.col("live_s").sum().over(run_keys))


def carriers(events: pl.DataFrame, by=("policy",)) -> pl.DataFrame:
    """Per group (default: policy, over its RTTs, utterances and repeats) and event type: totals, the residual
    and its share of the group's whole error, largest share of the error first."""
    by = list(by)
    g = (events.group_by([*by, "event"], maintain_order=True)
         .agg(runs=pl.col("seq").n_unique(), count=pl.col("count").sum(), live_s=pl.col("live_s").sum(),
              sim_s=pl.col("sim_s").sum(), residual_s=pl.col("residual_s").sum(),
              live_roundtrip_s=pl.col("live_roundtrip_s").sum(), live_service_s=pl.col("live_service_s").sum(),
              sim_network_s=pl.col("sim_network_s").sum(), sim_cloud_s=pl.col("sim_cloud_s").sum()))
    return (g.with_columns(share_of_error=pl.col("residual_s") / pl.col("residual_s").sum().over(by),
                           error_s=pl.col("residual_s").sum().over(by), latency_s=pl.col("live_s").sum().over(by))
            .sort([*by, pl.col("residual_s").abs()], descending=[False] * len(by) + [True], maintain_order=True))
