"""Size bounds for the runs whose size the user sets with a few numbers (sweeps, break-even maps, fleets).

A grid of 1,000 RTTs × 100 uplinks × 100 speed-ups is three short lines of TOML and ten million
configurations; without a bound it fills memory before the first row is priced. So each such run
counts what it would materialise *before* building anything and refuses past a stated limit,
unless the user passes ``--force``. The limits are constants here, in one place, with the
measurements behind the memory figures.
"""

from __future__ import annotations

import os

from ..errors import UserError
from ..units import fmt_bytes

#: Output rows (policies × configurations) a sweep may make without --force: ~0.8 GB of result frame.
MAX_GRID_ROWS = 2_000_000
#: Cells (edge speeds × RTTs) a break-even map may have without --force.
MAX_MAP_CELLS = 1_000_000
#: Utterance runs (devices × utterances per device) a fleet may play without --force: SimPy plays
#: about 8,000 a second on one core (sample trace, k=5, 1,000 devices), so this is about two minutes.
MAX_FLEET_RUNS = 1_000_000
#: Estimated peak memory a sweep or map may need without --force.
MAX_MEMORY_BYTES = 4e9

#: Bytes per output row of a sweep: measured with polars' estimated_size on the sample trace,
#: 123 columns with the time breakdown, bootstrap intervals, network, cost and provenance columns
#: (1,205 B/row; 869 B/row without intervals), rounded up.
ROW_BYTES = 1300
#: Bytes per (utterance × configuration) while one policy is priced: the latency matrix and its
#: breakdown parts are float64 arrays of that shape; measured with tracemalloc at ~130 B (16 arrays).
CELL_BYTES = 128
#: Bytes per configuration for the cost matrix theta (16 features × float64).
THETA_BYTES = 16 * 8


def _n(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def check_budget(what: str, count: int, limit: int, force: bool = False, *, unit: str = "rows",
                 detail: str = "", est_bytes: float | None = None,
                 byte_limit: float = MAX_MEMORY_BYTES) -> None:
    """Refuse ``count`` past ``limit`` (or ``est_bytes`` past ``byte_limit``) unless ``force``.

    One sentence giving the count, what it is made of, the memory estimate and the way out."""
    if force:
        return
    over_count = count > limit
    over_bytes = est_bytes is not None and est_bytes > byte_limit
    if not (over_count or over_bytes):
        return
    made_of = f" ({detail})" if detail else ""
    mem = f", about {fmt_bytes(est_bytes)} of memory" if est_bytes is not None else ""
    if over_count:
        why = f"over the limit of {limit:,} {unit}"
    else:
        why = f"over the limit of {fmt_bytes(byte_limit)}"
    raise UserError(f"{what} would make {count:,} {unit}{made_of}{mem}, {why}; "
                    f"make it smaller or pass --force to run it anyway")


def sweep_bytes(policies: int, configs: int, utterances: int, jobs: int = 1) -> float:
    """Estimated peak memory of a sweep: the result frame (held twice while the per-policy frames are
    concatenated) plus, per worker, one policy's theta and utterance × configuration arrays."""
    return 2.0 * policies * configs * ROW_BYTES + max(1, jobs) * configs * (THETA_BYTES + utterances * CELL_BYTES)


def check_sweep(policies: int, configs: int, utterances: int | None = None, jobs: int = 1,
                force: bool = False) -> None:
    """The sweep's bound: rows = policies × configurations, memory from :func:`sweep_bytes`
    (the row bound alone when the trace's size is not known yet)."""
    est = sweep_bytes(policies, configs, utterances, jobs) if utterances else None
    check_budget("this sweep", policies * configs, MAX_GRID_ROWS, force,
                 detail=f"{_n(policies, 'policy', 'policies')} × {_n(configs, 'configuration')}", est_bytes=est)


def check_map(n_edge_tps: int, n_rtts: int, utterances: int | None = None, force: bool = False) -> None:
    """The break-even map's bound: cells = edge speeds × RTTs; three policies are priced over them one
    after the other (one policy's working arrays at a time, plus the map's 12 columns)."""
    cells = n_edge_tps * n_rtts
    est = cells * (THETA_BYTES + utterances * CELL_BYTES + 12 * 8) if utterances else None
    check_budget("this break-even map", cells, MAX_MAP_CELLS, force, unit="cells",
                 detail=f"{_n(n_edge_tps, 'edge speed')} × {_n(n_rtts, 'RTT')}", est_bytes=est)


def check_fleet(devices: int, utterances_per_device: int, force: bool = False) -> None:
    """The fleet's bound: utterance runs = devices × utterances per device (each a SimPy process's work)."""
    check_budget("this fleet", devices * utterances_per_device, MAX_FLEET_RUNS, force, unit="utterance runs",
                 detail=f"{_n(devices, 'device')} × {_n(utterances_per_device, 'utterance')} each")


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one, as in containers and
    Slurm jobs; else os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cap_jobs(jobs: int, tasks: int | None = None) -> int:
    """Worker processes worth starting: at most the CPUs available and (when given) the number of
    tasks; more only adds processes that each load the trace and then wait for a core."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"--jobs {jobs!r} must be a whole number of at least 1, e.g. --jobs 4")
    capped = min(jobs, available_cpus())
    if tasks is not None:
        capped = min(capped, max(1, tasks))
    return capped
