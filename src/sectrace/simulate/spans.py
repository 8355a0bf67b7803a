"""One run's latency cut at every event: per-event schedule features and the timed spans a timeline shows.

The pieces come from ``schedule_features`` itself (its running totals after each event), never
from pricing events one at a time, so they carry its merge rules (the first draft step and the
first cloud step come out of a prefill; a verify call that prefills is one pass with no call
overhead of its own) and add up to the simulated latency by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..protocol import Commit, Fallback, GateCall, Policy, Run, Verify
from .replay import FEATURES, FI, schedule_features
from .timing import PARTS

#: Where each part of a run happens, in the order one event's pieces follow one another: edge work,
#: the uplink, the cloud pass, the downlink. A cloud pass that merges parts (prefill and verify) is one span.
GROUPS = (
    ("edge", ("edge_prefill", "edge_drafting", "gate")),
    ("network", ("uplink",)),
    ("cloud", ("cloud_prefill", "cloud_verify", "cloud_decode")),
    ("network", ("downlink",)),
)
PART_NAMES = {"edge_prefill": "edge prefill", "edge_drafting": "draft", "gate": "gate", "uplink": "uplink",
              "cloud_prefill": "cloud prefill", "cloud_verify": "verify", "cloud_decode": "decode",
              "downlink": "downlink"}
_PART_IDX = {part: [FI[f] for f in names] for part, names in PARTS.items()}


@dataclass
class TimedSpan:
    """A stretch of one run on a lane (edge, network or cloud), in seconds from the utterance's start."""

    lane: str
    name: str
    start_s: float
    dur_s: float
    args: dict = field(default_factory=dict)


def event_features(run_: Run, policy: Policy, utt: dict) -> np.ndarray:
    """(events + 1, features): what each event adds to the schedule features; the last row is what
    follows the last event (cloud-only decoding streams the caption down then).

    Differences of ``schedule_features``' running totals, so the rows sum exactly to its whole-run
    features: integer-valued counts, no rounding."""
    marks: list = []
    schedule_features(run_, policy, utt, marks)
    return np.diff(np.vstack([np.zeros(len(FEATURES)), *marks]), axis=0)


def run_timeline(run_: Run, policy: Policy, utt: dict, theta: np.ndarray) -> tuple[list[TimedSpan], list[TimedSpan]]:
    """Spans (back to back, adding up to the run's latency ``total · theta``) and instants (commits, gate decisions).

    Each event's features are split into the groups of :data:`GROUPS`; a group with no features is
    left out, and so is one priced at zero seconds (a free gate: its decision is still an instant).
    Raises UserError where the cost model prices a piece below zero (fitted slopes extrapolated
    beyond the trace's timings): no timeline can show a negative stretch."""
    inc = event_features(run_, policy, utt)
    events = list(run_.events) + [None]
    spans: list[TimedSpan] = []
    instants: list[TimedSpan] = []
    t = 0.0
    for i, (ev, f) in enumerate(zip(events, inc)):
        kind = "caption" if ev is None else type(ev).__name__
        args = {"event": kind} if ev is None else {"event": kind, "index": i, **ev._asdict()}
        for lane, parts in GROUPS:
            used = [p for p in parts if f[_PART_IDX[p]].any()]
            if not used:
                continue
            secs = {p: float(f[_PART_IDX[p]] @ theta[_PART_IDX[p]]) for p in used}
            dur = sum(secs.values())
            name = " + ".join(PART_NAMES[p] for p in used) + (" (caption)" if ev is None else "")
            if dur < 0:
                raise UserError(f"the cost model prices the {name} of event {i} ({kind}) at {dur:.3f} s, below zero "
                                "(its fitted slopes do not hold there); no timeline can show it")
            if dur == 0:
                continue
            span_args = dict(args)
            if len(used) > 1:  # one pass doing several things: say what each costs
                span_args.update({f"{p}_s": s for p, s in secs.items()})
            spans.append(TimedSpan(lane, name, t, dur, span_args))
            t += dur
        if type(ev) is Commit:
            instants.append(TimedSpan("edge", f"commit {ev.n}", t, 0.0, {"committed": ev.total}))
        elif type(ev) is GateCall:
            nxt = events[i + 1]
            escalate = type(nxt) in (Verify, Fallback)
            instants.append(TimedSpan("edge", "gate: escalate" if escalate else "gate: keep", t, 0.0,
                                      {"n": ev.n, "escalate": escalate}))
    return spans, instants
