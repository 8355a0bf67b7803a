"""From replays and configurations to result tables (docs/results-format.md documents the columns)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl

from ..errors import UserError
from ..gates import parse_gate
from ..gates.learned import GateFiles
from ..network import Network
from ..protocol import Accept, Policy, cloud_only, drafter_only
from ..trace import Trace
from .costs import COST_FIELDS, CostModel, verify_table_text
from .metrics import COUNTS, PART_COLUMNS, summary_columns, utterance_counts
from .overhead import BREAKDOWN_PARTS, breakdown_parts, overhead, overlap_hidden
from .provenance import provenance_columns
from .replay import Replay, Replayer, cloud_tokens, similarity
from .timing import cost_matrix, latency

#: Network columns every results row carries (the one ``Network`` a row was priced on, field for field).
NETWORK_COLUMNS = ("network", "rtt_s", "up_Bps", "down_Bps", "overhead_bytes", "jitter", "loss", "rto_s")
#: Cost-model columns: every coefficient of ``CostModel`` as ``cost_<field>``, and where they came from.
COST_COLUMNS = tuple(f"cost_{f}" for f in COST_FIELDS) + ("cost_source",)
#: Policy columns: the knobs that rebuild a policy (with its label in ``policy``).
POLICY_COLUMNS = ("k", "gate", "accept", "bonus", "privacy", "cloud_cache", "adaptive", "max_new_tokens")


def baselines(max_new_tokens: int) -> list[Policy]:
    return [drafter_only(max_new_tokens), cloud_only(max_new_tokens)]


def network_columns(nets: Sequence[Network]) -> dict[str, list]:
    """One list per network column, one entry per network."""
    return {"network": [n.name or None for n in nets], "rtt_s": [float(n.rtt_s) for n in nets],
            "up_Bps": [float(n.up_Bps) for n in nets], "down_Bps": [float(n.down_Bps) for n in nets],
            "overhead_bytes": [int(n.overhead_bytes) for n in nets], "jitter": [n.jitter for n in nets],
            "loss": [float(n.loss) for n in nets], "rto_s": [float(n.rto_s) for n in nets]}


def cost_columns(costs: Sequence[CostModel]) -> dict[str, list]:
    """One list per cost column, one entry per cost model."""
    out = {f"cost_{f}": [float(getattr(c, f)) for c in costs] for f in COST_FIELDS}
    out["cost_verify_table"] = [verify_table_text(c.verify_table) for c in costs]
    out["cost_source"] = [c.source for c in costs]
    return out



def policy_columns(pol: Policy) -> dict:
    return {"policy": pol.label, "k": pol.k, "gate": pol.gate_spec, "accept": str(pol.accept), "bonus": pol.bonus,
            "privacy": pol.privacy, "cloud_cache": pol.cloud_cache, "adaptive": pol.adaptive,
            "max_new_tokens": pol.max_new_tokens}


def simulate(trace: Trace, policies: Sequence[Policy], configs: Sequence[tuple[CostModel, Network]],
             replayer: Replayer | None = None, progress=None, command: str | None = None) -> pl.DataFrame:
    """One row per (policy, configuration, utterance). Baselines are whatever policies you pass.

    Each row records what rebuilds its run (policy knobs, the whole network, every cost coefficient:
    :func:`from_row`) and where it came from (:mod:`.provenance`; ``command`` is the command line)."""
    rp = replayer or Replayer(trace)
    theta = cost_matrix(configs)
    max_new = max(p.max_new_tokens for p in policies)
    ref = rp.replay(cloud_only(max_new))
    ref_tokens = [r.tokens if r is not None else None for r in ref.runs]
    prov = provenance_columns(trace, command)
    frames = []
    for pol in policies:
        rep = rp.replay(pol)
        frames.append(_policy_frame(trace, rep, ref_tokens, theta, configs, rp, prov))
        if progress is not None:
            progress(1)
    return pl.concat(frames, how="diagonal_relaxed")


def _policy_frame(trace, rep: Replay, ref_tokens, theta, configs, rp, prov) -> pl.DataFrame:
    pol = rep.policy
    n_utt, n_cfg = len(rp.utt_ids), len(configs)
    lat = latency(rep.total, theta)  # (U, C)
    ttft = latency(rep.first, theta)
    ov = overhead(rp, rep)
    hidden = overlap_hidden(ov, n_utt, theta)
    hidden[~rep.covered] = np.nan
    parts = breakdown_parts(rep, ov, theta, np.array([net.up_Bps for _, net in configs]))
    runs = rep.runs
    tokens = [r.tokens if r is not None else None for r in runs]
    exact = np.array([np.nan if t is None or c is None else float(t == c) for t, c in zip(tokens, ref_tokens)])
    sim = np.array([np.nan if t is None or c is None else similarity(t, c) for t, c in zip(tokens, ref_tokens)])
    counts = utterance_counts(runs, pol.k)
    per_pos = counts.pop("accepted_per_pos")
    per_utt = {
        "utt_id": rep.utt_ids,
        "covered": rep.covered,
        "miss_depth": [m.depth if m is not None else None for m in rep.misses],
        "miss_reason": [m.what if m is not None else None for m in rep.misses],
        **{c: counts[c] for c in ("n_tokens", "drafted", "blocks", "escalations", "verify_calls", "verified",
                                  "accepted", "corrected", "bonus_tokens", "wasted")},
        "accepted_per_pos": [None if r is None else [int(x) for x in row] for r, row in zip(runs, per_pos)],
        "cloud_tokens": cloud_tokens(rep.total),
        "bytes_up": np.where(rep.bytes_up < 0, np.nan, rep.bytes_up),
        "bytes_down": np.where(rep.bytes_down < 0, np.nan, rep.bytes_down),
        "audio_bytes_up": np.where(rep.audio_bytes_up < 0, np.nan, rep.audio_bytes_up),
        "exact_match_cloud": exact, "similarity_cloud": sim,
        "tokens": tokens,
        "caption": [trace.decode(t) if t is not None else None for t in tokens],
    }
    idx = np.tile(np.arange(n_utt), n_cfg)
    cfg = np.repeat(np.arange(n_cfg), n_utt)
    cols = {k: ([v[i] for i in idx] if isinstance(v, list) else np.asarray(v)[idx]) for k, v in per_utt.items()}
    per_cfg = {**network_columns([n for _, n in configs]), **cost_columns([c for c, _ in configs])}
    lat_flat = lat.T.reshape(-1)
    df = pl.DataFrame({
        **prov, **policy_columns(pol),
        "config": cfg, **{k: [v[c] for c in cfg] for k, v in per_cfg.items()},
        **cols,
        "ttft_s": ttft.T.reshape(-1), "latency_s": lat_flat,
        "tokens_per_s": cols["n_tokens"] / lat_flat,
        "overlap_hidden_s": hidden.T.reshape(-1), "latency_overlap_s": lat_flat - hidden.T.reshape(-1),
        **{f"t_{name}_s": parts[name].T.reshape(-1) for name in BREAKDOWN_PARTS},
    }, strict=False)
    return df.with_columns(pl.col("accepted_per_pos").cast(pl.List(pl.Int64)))


#: Columns a summary carries over from the per-utterance rows (the same for every row of a group).
_DESCRIBE = ("k", "gate", "accept", "bonus", "privacy", "cloud_cache", "adaptive", "max_new_tokens",
             *NETWORK_COLUMNS, "cost_source")
#: Per-utterance columns :func:`summarise` needs (written by this version's simulate).
_NEEDED = ("covered", "verify_calls", "verified", "accepted", "corrected", "bonus_tokens", "drafted", "escalations",
           "n_tokens", "latency_s", "ttft_s")


def summarise(results: pl.DataFrame, ci: bool = True) -> pl.DataFrame:
    """Per (policy, configuration): coverage and :data:`.metrics.METRICS` over the covered utterances,
    each mean with its bootstrap 95 % interval (``_lo``/``_hi``) when ``ci``, and the paired speedups
    over edge-only and cloud-only when the results hold them.

    Every metric of a row averages the same utterances, its covered ones (``covered`` of ``utterances``);
    the speedups average those the baselines cover too (``paired_covered``)."""
    missing = [c for c in _NEEDED if c not in results.columns]
    if missing:
        raise UserError(f"these results lack the column {missing[0]!r} (they were written by an older sectrace); "
                        "re-simulate them with `sectrace simulate --out`")
    timed_cols = [c for c in ("ttft_s", "latency_s", "latency_overlap_s", "overlap_hidden_s", *PART_COLUMNS)
                  if c in results.columns]
    count_cols = [c for c in (*COUNTS, "corrected", "bonus_tokens") if c in results.columns and c not in
                  ("emitted", "cloud_written")]
    base = {}
    for name, col in (("edge-only", "edge_latency_s"), ("cloud-only", "cloud_latency_s")):
        b = results.filter((pl.col("policy") == name) & pl.col("covered")).select("config", "utt_id", "latency_s")
        base[col] = b.rename({"latency_s": col}).unique(subset=["config", "utt_id"], keep="first")
    rows = []
    for (_, _), g in results.group_by(["policy", "config"], maintain_order=True):
        first = g.row(0, named=True)
        row = {"policy": first["policy"], "config": first["config"],
               **{c: first[c] for c in _DESCRIBE if c in g.columns},
               "utterances": g.height, "covered": int(g["covered"].sum())}
        cov = g.filter(pl.col("covered"))
        if cov.height:
            for col, b in base.items():
                cov = cov.join(b, on=["config", "utt_id"], how="left", maintain_order="left")
            counts = {c: cov[c].cast(pl.Float64).fill_null(np.nan).to_numpy() for c in count_cols}
            if "accepted" in counts and "verify_calls" in counts:
                counts["emitted"] = np.where(counts["verify_calls"] > 0, counts["accepted"] + counts["corrected"]
                                             + counts["bonus_tokens"], 0.0)
            timed = {c: cov[c].cast(pl.Float64).fill_null(np.nan).to_numpy()[:, None] for c in timed_cols}
            per_pos = None
            if "accepted_per_pos" in cov.columns and first["k"]:
                per_pos = np.array(cov["accepted_per_pos"].to_list(), float).reshape(cov.height, -1)
            has_base = all(b.height for b in base.values())
            baselines_ = ({c: cov[c].cast(pl.Float64).fill_null(np.nan).to_numpy()[:, None] for c in base}
                          if has_base else None)
            cols = summary_columns(counts, timed, 1, accepted_per_pos=per_pos, baselines=baselines_, ci=ci)
            row.update({k: v[0] for k, v in cols.items()})
        rows.append(row)
    return pl.DataFrame(rows, strict=False, infer_schema_length=None)


# --- rebuilding what a row was priced with ------------------------------------------------------------------
@dataclass(frozen=True)
class RowSetup:
    """What a results row was simulated with: its policy, cost model and network."""

    policy: Policy | None
    cost: CostModel
    network: Network


_OLD_RESULTS = ("they were written by an older sectrace that did not record it; re-simulate them with "
                "`sectrace simulate --out FILE` to get it")


def _need(row: dict, cols) -> None:
    for c in cols:
        if c not in row:
            raise UserError(f"these results lack the column {c!r}: {_OLD_RESULTS}")


def cost_from_row(row: dict) -> CostModel:
    """The cost model a results row was priced with, from its ``cost_<field>`` columns."""
    _need(row, COST_COLUMNS)
    table = row.get("cost_verify_table")
    return CostModel(**{f: float(row[f"cost_{f}"]) for f in COST_FIELDS}, source=row["cost_source"],
                     verify_table=tuple(float(v) for v in table.split()) if table else None)


def network_from_row(row: dict) -> Network:
    """The network a results row was priced on, from its network columns."""
    _need(row, NETWORK_COLUMNS[1:])
    return Network(rtt_s=float(row["rtt_s"]), up_Bps=float(row["up_Bps"]), down_Bps=float(row["down_Bps"]),
                   overhead_bytes=int(row["overhead_bytes"]), jitter=row["jitter"], loss=float(row["loss"]),
                   rto_s=float(row["rto_s"]), name=row.get("network") or "")


def policy_from_row(row: dict, gate=None) -> Policy:
    """The policy of a results row. ``gate`` turns its gate spec into a gate; the default opens no file
    (a learned gate named by a results row is refused: rows never choose files to open)."""
    _need(row, ("policy", *POLICY_COLUMNS))
    mx = int(row["max_new_tokens"])
    if row["policy"] == "edge-only":
        return drafter_only(mx)
    if row["policy"] == "cloud-only":
        return cloud_only(mx)
    if gate is None:

        def gate(spec):
            return parse_gate(spec, gate_files=GateFiles())
    adaptive = row["adaptive"]
    return Policy(k=int(row["k"]), gate=gate(row["gate"]), gate_spec=row["gate"], accept=Accept.parse(row["accept"]),
                  bonus=bool(row["bonus"]), privacy=row["privacy"], cloud_cache=row["cloud_cache"], max_new_tokens=mx,
                  adaptive=None if adaptive is None or (isinstance(adaptive, float) and np.isnan(adaptive))
                  else float(adaptive))


def from_row(row: dict, gate=None, with_policy: bool = True) -> RowSetup:
    """Policy, cost model and network of a results row of `simulate`, `sweep` or `fleet`: what a report,
    a breakdown or a timeline needs to price that run again, read from the row, never guessed.

    One sentence (UserError) when the row lacks the columns, as results written before they were recorded do."""
    return RowSetup(policy_from_row(row, gate) if with_policy else None, cost_from_row(row), network_from_row(row))


def coverage_note(frame: pl.DataFrame, trace_path=None, synthetic: bool = False, grid=None) -> str | None:
    """One sentence on coverage misses and how to fill them, or None when every row covers all its utterances.

    ``frame``: a sweep result or a ``summarise`` table (one row per policy and configuration, with
    ``utterances`` and ``covered`` counts) or ``simulate``'s per-utterance rows (``covered`` true/false).
    A miss is an utterance whose run leaves the explored trie: it is left out of the row's means, so a
    row with misses averages fewer utterances than its neighbours, which is easy to overlook in a big
    table. Real traces are filled by collecting the missing states (``collect --extend``); synthetic
    ones by generating them again with those policies explored. With ``grid`` (a sweep's grid file) the
    command explores the whole grid (``--explore GRID``) instead of naming policies one by one."""
    if frame.height == 0 or not {"policy", "covered"} <= set(frame.columns):
        return None
    if frame.schema["covered"] == pl.Boolean:
        keys = [c for c in ("policy", "config") if c in frame.columns]
        frame = frame.group_by(keys, maintain_order=True).agg(pl.len().alias("utterances"),
                                                             pl.col("covered").sum().alias("covered"))
    if "utterances" not in frame.columns:
        return None
    short = frame.filter(pl.col("covered") < pl.col("utterances"))
    if short.height == 0:
        return None
    n_none = short.filter(pl.col("covered") == 0).height
    policies = short["policy"].unique(maintain_order=True)
    worst = short.sort(pl.col("covered") / pl.col("utterances"), maintain_order=True)["policy"][0]
    trace = str(trace_path) if trace_path is not None else "TRACE"
    what = (f"{short.height:,} of {frame.height:,} rows ({100 * short.height / frame.height:.0f} %, "
            f"{len(policies):,} of {frame['policy'].n_unique():,} policies) miss some utterances"
            f"{f' ({n_none:,} cover none)' if n_none else ''}, so their means average fewer utterances "
            "(see the covered column)")
    which = f"--explore {grid}" if grid is not None else f"--policy '{worst}'"
    if synthetic:
        per = "" if grid is not None else "one --policy per policy that misses, and "
        how = (f"this trace is synthetic, so generate it again with those policies explored: "
               f"`sectrace trace synth NEW {which}` ({per}the model options in {trace}'s manifest)")
    else:
        per = "" if grid is not None else " (one --policy per policy that misses)"
        how = (f"record the missing decoding states with `sectrace collect MANIFEST --drafter D --verifier V "
               f"--extend {trace} --out NEW {which}`{per}")
    return f"{what}; {how}."
