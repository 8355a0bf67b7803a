"""From replays and configurations to result tables (docs/results-format.md documents the columns)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import polars as pl

from ..network import Network
from ..protocol import Policy, cloud_only, drafter_only
from ..trace import Trace
from ..version import __version__
from .costs import CostModel
from .overhead import BREAKDOWN_PARTS, breakdown_parts, overhead, overlap_hidden
from .replay import FI, Replay, Replayer, similarity
from .timing import cost_matrix, latency


def baselines(max_new_tokens: int) -> list[Policy]:
    return [drafter_only(max_new_tokens), cloud_only(max_new_tokens)]


def simulate(trace: Trace, policies: Sequence[Policy], configs: Sequence[tuple[CostModel, Network]],
             replayer: Replayer | None = None, progress=None) -> pl.DataFrame:
    """One row per (policy, configuration, utterance). Baselines are whatever policies you pass."""
    rp = replayer or Replayer(trace)
    theta = cost_matrix(configs)
    max_new = max(p.max_new_tokens for p in policies)
    ref = rp.replay(cloud_only(max_new))
    ref_tokens = [r.tokens if r is not None else None for r in ref.runs]
    decode = trace.decode
    frames = []
    n_utt = len(rp.utt_ids)
    n_cfg = len(configs)
    for pol in policies:
        rep = rp.replay(pol)
        frames.append(_policy_frame(trace, rep, ref_tokens, theta, configs, decode, n_utt, n_cfg, rp))
        if progress is not None:
            progress(1)
    return pl.concat(frames, how="diagonal_relaxed")


def _policy_frame(trace, rep: Replay, ref_tokens, theta, configs, decode, n_utt, n_cfg, rp) -> pl.DataFrame:
    pol = rep.policy
    lat = latency(rep.total, theta)  # (U, C)
    ttft = latency(rep.first, theta)
    ov = overhead(rp, rep)
    hidden = overlap_hidden(ov, n_utt, theta)
    hidden[~rep.covered] = np.nan
    parts = breakdown_parts(rep, ov, theta, np.array([net.up_Bps for _, net in configs]))
    runs = rep.runs
    tokens = [r.tokens if r is not None else None for r in runs]
    n_tok = np.array([len(t) if t is not None else np.nan for t in tokens])
    exact = np.array([np.nan if t is None or c is None else float(t == c) for t, c in zip(tokens, ref_tokens)])
    sim = np.array([np.nan if t is None or c is None else similarity(t, c) for t, c in zip(tokens, ref_tokens)])

    def count(attr):
        return np.array([getattr(r, attr) if r is not None else np.nan for r in runs], dtype=float)

    per_utt = {
        "utt_id": rep.utt_ids,
        "covered": rep.covered,
        "miss_depth": [m.depth if m is not None else None for m in rep.misses],
        "miss_reason": [m.what if m is not None else None for m in rep.misses],
        "n_tokens": n_tok, "drafted": count("drafted"), "blocks": count("blocks"),
        "escalations": count("escalations"), "verified": count("verified"), "accepted": count("accepted"),
        "corrected": count("corrected"), "bonus_tokens": count("bonus"),
        "wasted": np.array([r.wasted if r is not None else np.nan for r in runs], dtype=float),
        "cloud_tokens": rep.total[:, FI["verify_tokens"]] + rep.total[:, FI["cloud_steps"]],
        "bytes_up": np.where(rep.bytes_up < 0, np.nan, rep.bytes_up),
        "bytes_down": np.where(rep.bytes_down < 0, np.nan, rep.bytes_down),
        "audio_bytes_up": np.where(rep.audio_bytes_up < 0, np.nan, rep.audio_bytes_up),
        "exact_match_cloud": exact, "similarity_cloud": sim,
        "tokens": tokens,
        "caption": [decode(t) if t is not None else None for t in tokens],
    }
    idx = np.tile(np.arange(n_utt), n_cfg)
    cfg = np.repeat(np.arange(n_cfg), n_utt)
    cols = {k: ([v[i] for i in idx] if isinstance(v, list) else np.asarray(v)[idx]) for k, v in per_utt.items()}
    lat_flat = lat.T.reshape(-1)
    df = pl.DataFrame({
        "trace": trace.name, "trace_path": str(trace.path.resolve()) if trace.path else None,
        "synthetic": trace.synthetic, "tool_version": __version__,
        "policy": pol.label, "k": pol.k, "gate": pol.gate_spec, "accept": str(pol.accept), "bonus": pol.bonus,
        "privacy": pol.privacy, "cloud_cache": pol.cloud_cache, "adaptive": pol.adaptive,
        "max_new_tokens": pol.max_new_tokens,
        "config": cfg, "rtt_s": np.array([configs[c][1].rtt_s for c in cfg]),
        "up_Bps": np.array([configs[c][1].up_Bps for c in cfg]),
        "down_Bps": np.array([configs[c][1].down_Bps for c in cfg]),
        "cost_source": [configs[c][0].source for c in cfg],
        **cols,
        "ttft_s": ttft.T.reshape(-1), "latency_s": lat_flat,
        "tokens_per_s": cols["n_tokens"] / lat_flat,
        "overlap_hidden_s": hidden.T.reshape(-1), "latency_overlap_s": lat_flat - hidden.T.reshape(-1),
        **{f"t_{name}_s": parts[name].T.reshape(-1) for name in BREAKDOWN_PARTS},
    }, strict=False)
    return df


def summarise(results: pl.DataFrame) -> pl.DataFrame:
    """Per (policy, configuration): coverage and means over the covered utterances."""
    keys = ["policy", "config", "rtt_s", "k", "gate", "accept", "privacy", "cloud_cache"]
    cov = pl.col("covered")
    return (
        results.group_by(keys, maintain_order=True)
        .agg(
            pl.len().alias("utterances"),
            cov.sum().alias("covered"),
            pl.col("exact_match_cloud").filter(cov).mean().alias("exact_match_cloud"),
            pl.col("similarity_cloud").filter(cov).mean().alias("similarity_cloud"),
            pl.col("escalations").filter(cov).mean().alias("cloud_calls"),
            pl.col("cloud_tokens").filter(cov).mean().alias("cloud_tokens"),
            pl.col("bytes_up").filter(cov).mean().alias("bytes_up"),
            pl.col("audio_bytes_up").filter(cov).mean().alias("audio_bytes_up"),
            pl.col("n_tokens").filter(cov).mean().alias("n_tokens"),
            pl.col("ttft_s").filter(cov).mean().alias("ttft_s"),
            pl.col("latency_s").filter(cov).mean().alias("latency_s"),
            pl.col("latency_s").filter(cov).quantile(0.9).alias("latency_p90_s"),
            pl.col("latency_overlap_s").filter(cov).mean().alias("latency_overlap_s"),
            pl.col("overlap_hidden_s").filter(cov).mean().alias("overlap_hidden_s"),
            (pl.col("n_tokens").filter(cov).sum() / pl.col("latency_s").filter(cov).sum()).alias("tokens_per_s"),
        )
    )


def coverage_note(frame: pl.DataFrame, trace_path=None, synthetic: bool = False) -> str | None:
    """One sentence on coverage misses and how to fill them, or None when every row covers all its utterances.

    ``frame``: a sweep result or a ``summarise`` table (one row per policy and configuration, with
    ``utterances`` and ``covered`` counts) or ``simulate``'s per-utterance rows (``covered`` true/false).
    A miss is an utterance whose run leaves the explored trie: it is left out of the row's means, so a
    row with misses averages fewer utterances than its neighbours, which is easy to overlook in a big
    table. Real traces are filled by collecting the missing states (``collect --extend``); synthetic
    ones by generating them again with those policies explored."""
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
    if synthetic:
        how = (f"this trace is synthetic, so generate it again with those policies explored: "
               f"`sectrace trace synth NEW --policy '{worst}'` (one --policy per policy that misses, and the "
               f"model options in {trace}'s manifest)")
    else:
        how = (f"record the missing decoding states with `sectrace collect MANIFEST --drafter D --verifier V "
               f"--extend {trace} --out NEW --policy '{worst}'` (one --policy per policy that misses)")
    return f"{what}; {how}."
