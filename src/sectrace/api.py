"""sectrace from Python: the same spec strings as the CLI, results as polars DataFrames.

    >>> import sectrace
    >>> tr = sectrace.sample_trace()
    >>> summary = sectrace.simulate_trace(tr, ["k=5 gate=entropy:2.5 accept=rank:20 features"], rtt=["20ms", "100ms"])

Everything here calls the same functions as the CLI (one policy parser, one network type, one
cost builder), so a notebook and a command line give the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from .errors import UserError
from .gates import parse_policy
from .network import Network
from .protocol import Policy, cloud_only, drafter_only
from .simulate import baselines as _baselines
from .simulate import simulate as _simulate
from .simulate import summarise
from .simulate.profiles import base_cost, network_preset
from .trace import Trace, load_trace, sample_trace_path
from .units import parse_duration, parse_rate, parse_size


def sample_trace() -> Trace:
    """The bundled sample trace: 12 real clips (see the README)."""
    return load_trace(sample_trace_path())


def policies(specs: Iterable[str | Policy], max_new_tokens: int = 64) -> list[Policy]:
    """Policies from spec strings as results label them (``k=5 gate=entropy:2.5 accept=rank:20 features``),
    ``edge-only`` and ``cloud-only``; Policy objects pass through."""

    out = []
    for s in specs:
        if isinstance(s, Policy):
            out.append(s)
        elif str(s).strip().lower() in ("edge-only", "edge"):
            out.append(drafter_only(max_new_tokens))
        elif str(s).strip().lower() in ("cloud-only", "cloud"):
            out.append(cloud_only(max_new_tokens))
        else:
            out.append(parse_policy(str(s), max_new_tokens))
    return out


def networks(rtt: str | Sequence[str] = "50ms", uplink: str = "20Mbit/s", downlink: str = "50Mbit/s",
             overhead: str = "100B", preset: str | None = None) -> list[Network]:
    """One Network per RTT, units as the CLI writes them; a ``preset`` (wifi, 4g, …) gives the other fields."""
    rtts = [rtt] if isinstance(rtt, str) else list(rtt)
    if not rtts:
        raise UserError("give at least one RTT, e.g. rtt='50ms'")
    base = network_preset(preset) if preset else Network(up_Bps=parse_rate(uplink, "uplink"),
                                                         down_Bps=parse_rate(downlink, "downlink"),
                                                         overhead_bytes=parse_size(overhead, "overhead"))
    from dataclasses import replace

    return [replace(base, rtt_s=parse_duration(r, "rtt", require_unit=True)) for r in rtts]


def simulate_trace(trace: Trace | str | Path | None = None, policy_specs: Iterable[str | Policy] = (
        "k=5 gate=entropy:2.5 accept=rank:20 features",), *, rtt: str | Sequence[str] = "50ms",
        uplink: str = "20Mbit/s", downlink: str = "50Mbit/s", overhead: str = "100B", network: str | None = None,
        costs: str = "fit", edge_device: str | None = None, cloud_device: str | None = None,
        baselines: bool = True, per_utterance: bool = False):
    """Replay ``trace`` (a Trace, a path, or None for the bundled sample) under the policies and price them.

    Returns the per-(policy, network) summary as a polars DataFrame, or with ``per_utterance`` the rows
    `sectrace simulate --out` writes (docs/results-format.md)."""
    tr = trace if isinstance(trace, Trace) else load_trace(trace or sample_trace_path())
    max_new = int(tr.manifest["decoding"].get("max_new_tokens", 64))
    pols = (list(_baselines(max_new)) if baselines else []) + policies(policy_specs, max_new)
    cost = base_cost(tr, costs, edge_device, cloud_device)
    nets = networks(rtt, uplink, downlink, overhead, network)
    rows = _simulate(tr, pols, [(cost, n) for n in nets])
    return rows if per_utterance else summarise(rows)


__all__ = ["load_trace", "networks", "policies", "sample_trace", "simulate_trace"]
