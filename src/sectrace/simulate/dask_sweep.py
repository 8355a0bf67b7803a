"""`sweep --backend dask`: the sweep's tasks on a dask.distributed cluster, beyond one machine.

A task is what :func:`.sweep.run_sweep` computes in its loop, one policy × one block of configurations
(:func:`.sweep.sweep_block`), so the rows, their columns and their order are the local backend's: same
block shapes, so the same floating-point sums, and every bootstrap draws the same resamples (a fixed seed
over the same utterances). Frames come back in (policy, block) order, whatever order the workers finish in.

The trace is scattered, not read from a path: the client, which has loaded and hashed it, sends it once
to every worker (``broadcast``), and each worker builds its replayer once and keeps it (with its replays,
configuration columns and baselines) for all its tasks of the sweep. Workers then need no filesystem in
common with the client (a laptop's trace, a node-local /tmp, another cluster), and the rows'
``trace_sha256`` is the trace the workers replayed, not whatever sits at that path on their machines.
The price is the trace's size once per worker through the network (megabytes for thousands of
utterances; the bundled trace is 1.3 MB).
"""

from __future__ import annotations

import threading
from typing import Sequence

import polars as pl

from ..errors import UserError
from ..protocol import Policy
from ..trace import Trace
from .costs import CostModel
from .provenance import provenance_columns
from .replay import Replayer
from .sweep import Axes, baseline_latencies, block_config_columns, config_blocks, sweep_block, theta_grid

#: Seconds to wait for the scheduler to answer, and then for a first worker.
CONNECT_TIMEOUT_S = 5.0

# One sweep's state per worker process: the replayer and what its tasks share (keyed by the scattered
# trace's key, so a later sweep, or another client's, starts afresh). A lock, for workers with threads.
_STATE: dict | None = None
_LOCK = threading.Lock()


def _ask_identity(address: str, timeout_s: float) -> dict:
    """The server's answer to dask's ``identity`` message (raises when nothing, or no dask server, answers)."""
    import asyncio

    from distributed.comm import connect as dial

    async def ask():
        comm = await dial(address, timeout=timeout_s)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            await comm.close()

    return asyncio.run(asyncio.wait_for(ask(), timeout_s))


def connect(address: str, timeout_s: float = CONNECT_TIMEOUT_S):
    """A client of the scheduler at ``address`` that has at least one worker, or one sentence (exit 2).

    The scheduler is asked who it is before a Client is made: a Client that fails half-way blocks the
    interpreter's exit for seconds and prints a traceback while it is collected."""
    from distributed import Client

    hint = f"start one with `dask scheduler`, then `dask worker {address}` on each machine, or check --scheduler"
    try:
        who = _ask_identity(address, timeout_s)
    except ValueError as exc:
        raise UserError(f"--scheduler {address!r} is not a scheduler address ({exc}); "
                        "give one like tcp://HOST:8786") from None
    except Exception as exc:  # refused, timed out, or something that does not speak dask's protocol
        raise UserError(f"no dask scheduler answered at {address} within {timeout_s:g} s "
                        f"({type(exc).__name__}); {hint}") from None
    if not isinstance(who, dict) or who.get("type") != "Scheduler":
        kind = who.get("type") if isinstance(who, dict) else type(who).__name__
        raise UserError(f"{address} answers as a dask {kind}, not a scheduler; give the scheduler's address "
                        "(`dask scheduler` prints it)")
    client = Client(address, timeout=timeout_s, set_as_default=False)
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except (OSError, TimeoutError):
        client.close()
        raise UserError(f"the dask scheduler at {address} has no workers after {timeout_s:g} s; "
                        f"start some with `dask worker {address}`") from None
    return client


def _worker_state(trace: Trace, key: str) -> dict:
    global _STATE
    with _LOCK:
        if _STATE is None or _STATE["key"] != key:
            _STATE = {"key": key, "rp": Replayer(trace), "theta": {}, "cfg": {}, "base": {}}
        return _STATE


def _forget(key: str) -> None:
    """Drop a finished sweep's replayer from a worker (workers outlive sweeps)."""
    global _STATE
    with _LOCK:
        if _STATE is not None and _STATE["key"] == key:
            _STATE = None


def _task(trace: Trace, key: str, pol: Policy, cost: CostModel, ax: Axes, lo: int, hi: int, prov: dict,
          breakdown: bool, ci: bool) -> pl.DataFrame:
    st = _worker_state(trace, key)
    b = (lo, hi)
    with _LOCK:  # the shared pieces are built once per worker; the policy's own work runs unlocked
        if b not in st["cfg"]:
            st["cfg"][b] = block_config_columns(cost, ax, lo, hi)
            st["theta"][b] = theta_grid(cost, ax.block(lo, hi))
        if (pol.max_new_tokens, b) not in st["base"]:
            st["base"][pol.max_new_tokens, b] = baseline_latencies(st["rp"], pol.max_new_tokens, st["theta"][b])
    return sweep_block(st["rp"], pol, cost, ax, lo, hi, prov, breakdown, ci, st["base"][pol.max_new_tokens, b],
                       st["cfg"][b], st["theta"][b])


def run_sweep_dask(client, trace: Trace, policies: Sequence[Policy], cost: CostModel, ax: Axes, progress=None,
                   breakdown: bool = True, ci: bool = True, provenance: dict | None = None) -> pl.DataFrame:
    """:func:`.sweep.run_sweep` on ``client``'s cluster (:func:`connect`): the same rows in the same order."""
    from distributed import as_completed

    prov = provenance_columns(trace) if provenance is None else provenance
    trace_f, cost_f, ax_f, prov_f = client.scatter([trace, cost, ax, prov], broadcast=True, hash=False)
    blocks = config_blocks(len(ax))
    cells = [(i, j) for i in range(len(policies)) for j in range(len(blocks))]
    n = len(cells)
    futs = client.map(_task, [trace_f] * n, [trace_f.key] * n, [policies[i] for i, _ in cells], [cost_f] * n,
                      [ax_f] * n, [blocks[j][0] for _, j in cells], [blocks[j][1] for _, j in cells], [prov_f] * n,
                      [breakdown] * n, [ci] * n, pure=False,
                      key=[f"sectrace-sweep-{trace_f.key}-{i}-{j}" for i, j in cells])  # one graph, not n submissions
    futures = dict(zip(futs, cells))
    frames: dict[tuple[int, int], pl.DataFrame] = {}
    left = [len(blocks)] * len(policies)
    try:
        for fut in as_completed(futures, loop=client.loop):
            i, j = futures[fut]
            frames[i, j] = fut.result()
            left[i] -= 1
            if progress is not None and not left[i]:
                progress(1)
    except BaseException as exc:
        client.cancel([*futures, trace_f, cost_f, ax_f, prov_f])
        if isinstance(exc, ModuleNotFoundError):
            raise UserError(f"a dask worker cannot import {exc.name}: install sectrace (the same version as here) "
                            "in the workers' environment") from None
        raise
    client.run(_forget, trace_f.key)  # the futures are released as they go out of scope
    return pl.concat([frames[i, j] for i in range(len(policies)) for j in range(len(blocks))],
                     how="diagonal_relaxed")
