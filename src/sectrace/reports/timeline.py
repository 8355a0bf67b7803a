"""One utterance's run as a Chrome / Perfetto trace (JSON "traceEvents"), opened in chrome://tracing or ui.perfetto.dev.

Spans sit on three lanes (edge, network, cloud). The closed-form engine plays events back to
back on one device, so spans follow one another; instants mark commits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(trace, indent=1), encoding="utf-8")
    return path
