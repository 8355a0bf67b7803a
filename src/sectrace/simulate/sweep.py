"""Sweeps: the cartesian product of policies × networks × devices, priced in one pass per policy.

Replay (walking the trie) happens once per policy; every (network, device) configuration is then a
column of a cost matrix built with numpy broadcasting, and a policy's latencies for all of them are
one matrix product (utterances × features) @ (features × configurations). The summary per
(policy, configuration) is the one `simulate` prints (:mod:`.metrics`: vLLM's speculative-decoding
metrics, cloud use, latency with bootstrap intervals, paired speedups over the baselines).
"""

from __future__ import annotations

import itertools

try:
    import tomllib  # noqa: F401  (the CLI imports it from here)
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # noqa: F401
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from ..errors import UserError
from ..gates import parse_gate
from ..network import Network
from ..protocol import Accept, Policy, cloud_only, drafter_only
from ..trace import load_trace
from .aggregate import Linear, one_blas_thread, rows
from .costs import CostModel, verify_table_text
from .grid import GridSpec
from .metrics import SWEEP_CI, SWEEP_RESAMPLES, summary_columns, utterance_counts
from .overhead import BREAKDOWN_PARTS, breakdown_linear, overhead, overlap_hidden
from .profiles import cloud_device, edge_device, network_preset
from .replay import Replayer, cloud_tokens
from .timing import cost_theta, cost_vector


@dataclass
class Axes:
    """One value per configuration (arrays of equal length C) on top of a base cost model."""

    edge_speedup: np.ndarray
    cloud_speedup: np.ndarray
    rtt_s: np.ndarray
    up_Bps: np.ndarray
    down_Bps: np.ndarray
    overhead_bytes: np.ndarray
    extra_s: np.ndarray  # expected jitter + retransmission seconds per message
    labels: dict = field(default_factory=dict)  # extra per-configuration columns for the output (name → list)

    def __len__(self):
        return len(self.rtt_s)

    def block(self, lo: int, hi: int) -> "Axes":
        """Configurations ``lo:hi``: a task's share of a distributed sweep (each column is priced on its own,
        so a block's rows equal those rows of the whole; their ``config`` numbers restart at 0)."""
        if (lo, hi) == (0, len(self)):
            return self
        arrays = {f: getattr(self, f)[lo:hi] for f in ("edge_speedup", "cloud_speedup", "rtt_s", "up_Bps", "down_Bps",
                                                       "overhead_bytes", "extra_s")}
        return Axes(**arrays, labels={k: list(v[lo:hi]) for k, v in self.labels.items()})


def theta_grid(cost: CostModel, ax: Axes) -> np.ndarray:
    """(features, configurations): cost_vector for every configuration, built without a Python loop."""
    return cost_theta(cost, ax.rtt_s, ax.up_Bps, ax.down_Bps, ax.overhead_bytes, ax.extra_s,
                      1.0 / ax.edge_speedup, 1.0 / ax.cloud_speedup)


def product_axes(nets: Sequence[Network], edge_speedups: Sequence[float], cloud_speedups: Sequence[float],
                 extra_labels: dict | None = None) -> Axes:
    """The cartesian product networks × edge speedups × cloud speedups; each configuration's whole
    network (name, jitter, loss, retransmission timeout) rides along in ``labels``."""
    grid = list(itertools.product(range(len(nets)), edge_speedups, cloud_speedups))
    ni = np.array([g[0] for g in grid], int)
    labels = {"network": [nets[i].name or f"net{i}" for i in ni], "jitter": [nets[i].jitter for i in ni],
              "loss": [float(nets[i].loss) for i in ni], "rto_s": [float(nets[i].rto_s) for i in ni]}
    for k, v in (extra_labels or {}).items():
        labels[k] = [v[i] for i in ni]
    return Axes(edge_speedup=np.array([g[1] for g in grid], float), cloud_speedup=np.array([g[2] for g in grid], float),
                rtt_s=np.array([nets[i].rtt_s for i in ni]), up_Bps=np.array([nets[i].up_Bps for i in ni]),
                down_Bps=np.array([nets[i].down_Bps for i in ni]),
                overhead_bytes=np.array([nets[i].overhead_bytes for i in ni], float),
                extra_s=np.array([nets[i].expected_extra_s for i in ni]), labels=labels)


_EDGE_FIELDS = ("edge_prefill_a", "edge_prefill_b", "edge_step_a", "edge_step_c")


def config_columns(cost: CostModel, ax: Axes) -> dict:
    """Per configuration: the network and the cost model it was priced with, coefficient by coefficient
    (the base model scaled by the configuration's edge and cloud speed-ups, as :func:`theta_grid` prices it)."""
    from .costs import COST_FIELDS

    n = len(ax)
    cols = {"config": np.arange(n), "edge_speedup": ax.edge_speedup, "cloud_speedup": ax.cloud_speedup,
            "rtt_s": ax.rtt_s, "up_Bps": ax.up_Bps, "down_Bps": ax.down_Bps,
            "overhead_bytes": ax.overhead_bytes.astype(np.int64)}
    labels = dict(ax.labels)
    for key, default in (("network", None), ("jitter", None), ("loss", 0.0), ("rto_s", Network().rto_s)):
        cols[key] = labels.pop(key, [default] * n)
    for f in COST_FIELDS:
        scale = 1.0 if f == "gate_s" else 1.0 / (ax.edge_speedup if f in _EDGE_FIELDS else ax.cloud_speedup)
        cols[f"cost_{f}"] = getattr(cost, f) * scale * np.ones(n)
    speeds, which = np.unique(ax.cloud_speedup, return_inverse=True)  # a text per cloud speed-up, not per row
    texts = [verify_table_text(cost.verify_table, 1.0 / c) for c in speeds]
    cols["cost_verify_table"] = [texts[i] for i in which.ravel()]
    cols["cost_source"] = [cost.source] * n
    return {**cols, **labels}


def baseline_latencies(rp: Replayer, max_new_tokens: int, theta: np.ndarray) -> dict[str, Linear]:
    """Edge-only and cloud-only latency per utterance × configuration (NaN rows where not covered), factored
    (:class:`.aggregate.Linear`): what the paired speedups of :data:`.metrics.SPEEDUPS` compare each policy with."""
    out = {}
    for col, pol in (("edge_latency_s", drafter_only(max_new_tokens)), ("cloud_latency_s", cloud_only(max_new_tokens))):
        out[col] = Linear(rp.replay(pol).total, theta)
    return out


def _covered_counts(rep) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The protocol counts of a replay's covered utterances, and their accepted-per-position rows: the same for
    every block of configurations, so walked once per replay (cached on it, as :func:`.overhead.overhead` is)."""
    hit = getattr(rep, "_covered_counts", None)
    if hit is None:
        ok = rep.covered
        counts = utterance_counts(rep.runs, rep.policy.k)
        per_pos = counts.pop("accepted_per_pos")[ok]
        counts = {c: v[ok] for c, v in counts.items()}
        counts.update(cloud_tokens=cloud_tokens(rep.total)[ok],
                      bytes_up=rep.bytes_up[ok].astype(float), bytes_down=rep.bytes_down[ok].astype(float),
                      audio_bytes_up=rep.audio_bytes_up[ok].astype(float))
        hit = rep._covered_counts = (counts, per_pos)
    return hit


def sweep_policy(rp: Replayer, pol: Policy, cost: CostModel, ax: Axes, breakdown: bool = True,
                 baselines: dict | None = None, ci: bool = True, theta: np.ndarray | None = None) -> dict:
    """Summary columns (one value per configuration) for one policy: :func:`.metrics.summary_columns`
    over its covered utterances, the same summary `simulate` prints.

    Priced aggregate first (:mod:`.aggregate`): latency, TTFT, the baselines and the breakdown parts stay
    factored as features @ theta, so their means and bootstrap sums never build an utterances ×
    configurations array; only the overlap's hidden time (a minimum per escalation) and the latency
    percentiles are multiplied out, on one BLAS thread (:func:`.aggregate.one_blas_thread` says why).
    ``baselines``: :func:`baseline_latencies` for the paired speedups (computed here when None); ``theta``:
    :func:`theta_grid` of ``ax`` (computed when None)."""
    with one_blas_thread():
        return _sweep_policy(rp, pol, cost, ax, breakdown, baselines, ci, theta)


def _sweep_policy(rp, pol, cost, ax, breakdown, baselines, ci, theta) -> dict:
    rep = rp.replay(pol)
    theta = theta_grid(cost, ax) if theta is None else theta
    ok = rep.covered
    n_cfg = len(ax)
    out = {"policy": [pol.label] * n_cfg, "k": np.full(n_cfg, pol.k), "gate": [pol.gate_spec] * n_cfg,
           "accept": [str(pol.accept)] * n_cfg, "bonus": np.full(n_cfg, pol.bonus),
           "privacy": [pol.privacy] * n_cfg, "cloud_cache": [pol.cloud_cache] * n_cfg,
           "adaptive": [pol.adaptive] * n_cfg, "max_new_tokens": np.full(n_cfg, pol.max_new_tokens),
           "utterances": np.full(n_cfg, len(ok)), "covered": np.full(n_cfg, int(ok.sum()))}
    if not ok.any():
        return out
    counts, per_pos = _covered_counts(rep)
    total = rep.total[ok]
    ov = overhead(rp, rep)
    hidden = overlap_hidden(ov, len(ok), theta)[ok]
    lat = Linear(total, theta)
    timed = {"latency_s": lat, "ttft_s": Linear(rep.first[ok], theta), "overlap_hidden_s": hidden,
             "latency_overlap_s": Linear(total, theta, minus=hidden)}
    if breakdown:
        parts = breakdown_linear(rep, ov, theta, ax.up_Bps, covered=True)
        timed.update({f"t_{name}_s": parts[name] for name in BREAKDOWN_PARTS})
    if baselines is None:
        baselines = baseline_latencies(rp, pol.max_new_tokens, theta)
    base = {c: rows(v, ok) for c, v in baselines.items()}
    out.update(summary_columns(counts, timed, n_cfg, accepted_per_pos=per_pos, baselines=base,
                               ci=SWEEP_CI if ci else False, n_resamples=SWEEP_RESAMPLES))
    return out


#: Configurations priced together: a sweep's unit of work is one policy × one block of this many consecutive
#: configurations, in every backend. A matrix product's last bits depend on its shape (BLAS picks kernels by
#: it), so the local, joblib and dask backends price the same blocks to give the same rows bit for bit. Priced
#: aggregate first, a block multiplies out only the overlap's hidden time (escalations × block, then utterances ×
#: block) and, a slice at a time, the latencies of the percentiles; a larger block pays the per-call work of a
#: summary fewer times (80 policies × 30,000 configurations × 40 utterances without intervals: ~2.2 CPU-s at
#: 1,024, ~1.2 at 4,096, benchmarks/bench_closed_form_ratio.py), at ~10 MB per block on 40 utterances.
CONFIG_BLOCK = 4096


def config_blocks(n_configs: int, size: int | None = None) -> list[tuple[int, int]]:
    """``(lo, hi)`` of each block of configurations, in order (``size``: :data:`CONFIG_BLOCK`)."""
    size = size or CONFIG_BLOCK
    return [(lo, min(n_configs, lo + size)) for lo in range(0, n_configs, size)]


def block_config_columns(cost: CostModel, ax: Axes, lo: int, hi: int) -> dict:
    """:func:`config_columns` of configurations ``lo:hi``, numbered as in the whole grid."""
    cols = config_columns(cost, ax.block(lo, hi))
    cols["config"] = cols["config"] + lo
    return cols


def sweep_block(rp: Replayer, pol: Policy, cost: CostModel, ax: Axes, lo: int, hi: int, provenance: dict,
                breakdown: bool = True, ci: bool = True, baselines: dict | None = None,
                cfg_cols: dict | None = None, theta: np.ndarray | None = None) -> pl.DataFrame:
    """The rows of one policy × configurations ``lo:hi`` (one of :func:`config_blocks`): what every backend
    computes per task. ``baselines``: :func:`baseline_latencies` on that block, ``cfg_cols``: its
    :func:`block_config_columns`, ``theta``: its :func:`theta_grid` (all computed when None; callers pricing
    many policies keep them)."""
    sub = ax.block(lo, hi)
    if cfg_cols is None:
        cfg_cols = block_config_columns(cost, ax, lo, hi)
    cols = sweep_policy(rp, pol, cost, sub, breakdown, baselines=baselines, ci=ci, theta=theta)
    return pl.DataFrame({**provenance, **cols, **cfg_cols}, strict=False)


def run_sweep(rp: Replayer, policies: Sequence[Policy], cost: CostModel, ax: Axes, progress=None,
              breakdown: bool = True, ci: bool = True, provenance: dict | None = None) -> pl.DataFrame:
    """One row per (policy, configuration): the policy, the configuration's network and cost model
    (:func:`config_columns`), provenance (:mod:`.provenance`; computed from the trace when None) and
    the summary of :func:`sweep_policy`, with bootstrap intervals when ``ci``; priced per
    :data:`CONFIG_BLOCK` (:func:`sweep_block`)."""
    from .provenance import provenance_columns

    prov = provenance_columns(rp.trace) if provenance is None else provenance
    frames = []
    blocks = config_blocks(len(ax))
    thetas = {b: theta_grid(cost, ax.block(*b)) for b in blocks}
    cfg_cols = {b: block_config_columns(cost, ax, *b) for b in blocks}
    base: dict[tuple, dict] = {}
    for pol in policies:
        for b in blocks:
            if (pol.max_new_tokens, b) not in base:
                base[pol.max_new_tokens, b] = baseline_latencies(rp, pol.max_new_tokens, thetas[b])
            frames.append(sweep_block(rp, pol, cost, ax, *b, prov, breakdown, ci, base[pol.max_new_tokens, b],
                                      cfg_cols[b], thetas[b]))
        if progress is not None:
            progress(1)
    return pl.concat(frames, how="diagonal_relaxed")


# --- grid files -----------------------------------------------------------------------------
def load_grid(path: Path, max_new_tokens: int, *, trace=None, utterances: int | None = None, jobs: int = 1,
              force: bool = False) -> tuple[list[Policy], Axes, CostModel | None, GridSpec]:
    """Read a grid TOML (docs/simulator.md; the keys are declared in :mod:`.grid`) into policies,
    configurations and the device cost model.

    The grid is validated and its size counted before anything is built: past the bounds of
    :mod:`.budget` (rows, and memory when ``utterances`` or ``trace`` gives the trace's size) it is
    refused unless ``force``. ``trace`` also lets content and learned gates check against it."""
    from .budget import check_sweep
    from .grid import read_grid

    spec = read_grid(path, trace)
    if utterances is None and trace is not None:
        utterances = trace.utterances.height
    check_sweep(spec.n_policies, spec.n_configs, utterances, jobs, force)

    def pol(key, default):
        return spec.get("policy", key, default)

    policies = [drafter_only(max_new_tokens), cloud_only(max_new_tokens)] if spec.get(None, "baselines", True) else []
    gates = {g: parse_gate(g, trace) for g in pol("gate", ["entropy:2.5"])}
    for k, g, acc, bonus, priv, cache, adapt in itertools.product(
            pol("k", [5]), gates, pol("accept", [Accept.parse("rank:20")]), pol("bonus", [True]),
            pol("privacy", ["features"]), pol("cloud_cache", ["stateful"]), pol("adaptive", [None])):
        policies.append(Policy(k=k, gate=gates[g], gate_spec=g.lower(), accept=acc, bonus=bonus, privacy=priv,
                               cloud_cache=cache, max_new_tokens=max_new_tokens, adaptive=adapt))
    keep = object()  # "not given: the preset's value"
    nets = []
    for preset in spec.get("network", "preset", [None]):
        base = network_preset(preset) if preset else Network()
        for rtt, up, down, ovh, jit, loss in itertools.product(
                *(spec.get("network", key, [keep]) for key in ("rtt", "uplink", "downlink", "overhead", "jitter",
                                                               "loss"))):
            over = {field_: value for field_, value in (("rtt_s", rtt), ("up_Bps", up), ("down_Bps", down),
                                                         ("overhead_bytes", ovh), ("jitter", jit), ("loss", loss))
                    if value is not keep}
            nets.append(replace(base, **over, name=preset or "custom"))
    cost = None
    edge, cloud = spec.get("device", "edge"), spec.get("device", "cloud")
    if edge or cloud:
        cost = CostModel()
        if edge:
            cost = edge_device(edge).apply(cost)
        if cloud:
            cost = cloud_device(cloud).apply(cost)
    ax = product_axes(nets, spec.get("device", "edge_speedup", [1.0]), spec.get("device", "cloud_speedup", [1.0]))
    return policies, ax, cost, spec


# --- break-even maps ------------------------------------------------------------------------
#: The map's paired comparisons: Σ baseline / Σ hybrid latency over the utterances the hybrid covers, with the
#: sweep's paired bootstrap interval (same resampled utterances for both), so a cell can say "within noise".
PAIRED_MAP_COLUMNS = ("speedup_vs_edge", "speedup_vs_edge_lo", "speedup_vs_edge_hi",
                      "speedup_vs_cloud", "speedup_vs_cloud_lo", "speedup_vs_cloud_hi")


def breakeven(rp: Replayer, pol: Policy, cost: CostModel, net: Network, edge_tps: Sequence[float],
              rtts: Sequence[float], force: bool = False) -> pl.DataFrame:
    """The edge tok/s × RTT plane for one policy: mean latency of the hybrid, edge-only and cloud-only.

    Edge tok/s is the context-free decode speed 1/edge_step_a; the whole edge (prefill included)
    is scaled to reach it, as --edge-speedup does. A plane past :mod:`.budget`'s bounds is refused
    unless ``force``."""
    from .budget import check_map

    check_map(len(edge_tps), len(rtts), rp.trace.utterances.height, force)
    if cost.edge_step_a <= 0:
        raise UserError("the cost model has no edge decode cost to scale; give --edge-tps")
    base_tps = 1.0 / cost.edge_step_a
    tps = np.repeat(np.asarray(edge_tps, float), len(rtts))
    rtt = np.tile(np.asarray(rtts, float), len(edge_tps))
    n = len(tps)
    ax = Axes(edge_speedup=tps / base_tps, cloud_speedup=np.ones(n), rtt_s=rtt, up_Bps=np.full(n, net.up_Bps),
              down_Bps=np.full(n, net.down_Bps), overhead_bytes=np.full(n, float(net.overhead_bytes)),
              extra_s=np.full(n, net.expected_extra_s))
    mx = pol.max_new_tokens
    res = {}
    for name, p in (("hybrid", pol), ("edge_only", drafter_only(mx)), ("cloud_only", cloud_only(mx))):
        cols = sweep_policy(rp, p, cost, ax, breakdown=False, ci=name == "hybrid")
        if "latency_s" not in cols:
            raise UserError(f"no utterance of the {name.replace('_', '-')} run is covered by the trace")
        res[name] = cols["latency_s"]
        if name == "hybrid":
            res["hybrid_overlap"] = cols["latency_overlap_s"]
            paired = {f"paired_{c}": cols[c] for c in PAIRED_MAP_COLUMNS}
    return pl.DataFrame({
        "policy": pol.label, "edge_tps": tps, "rtt_s": rtt,
        "hybrid_s": res["hybrid"], "hybrid_overlap_s": res["hybrid_overlap"], "edge_only_s": res["edge_only"],
        "cloud_only_s": res["cloud_only"],
        "beats_edge": res["hybrid"] < res["edge_only"], "beats_cloud": res["hybrid"] < res["cloud_only"],
        "overlap_beats_edge": res["hybrid_overlap"] < res["edge_only"],
        "speedup_vs_edge": res["edge_only"] / res["hybrid"], "speedup_vs_cloud": res["cloud_only"] / res["hybrid"],
        **paired,
        "beats_edge_sure": paired["paired_speedup_vs_edge_lo"] > 1,
        "loses_to_edge_sure": paired["paired_speedup_vs_edge_hi"] < 1,
    })


def check_theta_grid(cost: CostModel, nets: Sequence[Network], ax: Axes) -> float:
    """Largest difference between theta_grid and the per-configuration cost_vector (a self-check)."""
    th = theta_grid(cost, ax)
    ref = np.column_stack([cost_vector(cost.scaled(ax.edge_speedup[i], ax.cloud_speedup[i]),
                                       replace(nets[0], rtt_s=ax.rtt_s[i], up_Bps=ax.up_Bps[i], down_Bps=ax.down_Bps[i],
                                               overhead_bytes=ax.overhead_bytes[i]))
                           for i in range(len(ax))])
    return float(np.max(np.abs(th - ref)))


def _sweep_chunk(trace_path: str, policies: Sequence[Policy], cost: CostModel, ax: Axes,
                 breakdown: bool, ci: bool, provenance: dict) -> pl.DataFrame:

    return run_sweep(Replayer(load_trace(trace_path)), policies, cost, ax, breakdown=breakdown, ci=ci,
                     provenance=provenance)


def run_sweep_parallel(trace_path, policies: Sequence[Policy], cost: CostModel, ax: Axes, jobs: int,
                       progress=None, breakdown: bool = True, ci: bool = True,
                       provenance: dict | None = None) -> pl.DataFrame:
    """The same sweep over ``jobs`` joblib workers (each loads the trace and replays its share of policies).
    Rows come back in the order of ``policies``, identical to :func:`run_sweep`. ``jobs`` is capped at
    the CPUs available and the number of policies (:func:`.budget.cap_jobs`)."""
    from joblib import Parallel, delayed

    from .budget import cap_jobs
    from .provenance import provenance_columns

    if provenance is None:  # hashed once here, not once per worker
        provenance = provenance_columns(load_trace(trace_path))
    jobs = cap_jobs(jobs, len(policies))
    n_chunks = min(len(policies), jobs * 4)
    chunks = [list(policies[i::n_chunks]) for i in range(n_chunks)]
    order = [i for c in range(n_chunks) for i in range(c, len(policies), n_chunks)]
    frames = []
    gen = Parallel(n_jobs=jobs, return_as="generator")(
        delayed(_sweep_chunk)(str(trace_path), c, cost, ax, breakdown, ci, provenance) for c in chunks)
    for c, df in zip(chunks, gen):
        frames.append(df)
        if progress is not None:
            progress(len(c))
    df = pl.concat(frames, how="diagonal_relaxed")
    n_cfg = len(ax)
    # put the policies back in their given order: row block j holds policies[order[j]]
    rank = np.repeat(np.array(order), n_cfg)
    return df.with_columns(pl.Series("_r", rank)).sort("_r", "config", maintain_order=True).drop("_r")
