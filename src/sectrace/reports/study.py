"""The study's Table 2 explained: its rows beside the simulator's, and the study's puzzle answered.

The study (seed report, Table 2) measured the hybrid *slower* than edge-only (43.87 s against
34.89 s per caption) and blamed an entropy gate that escalates too often. Here the simulator
prices the study's devices on a trace with the study's caption length and asks under which
conditions (stateful or stateless cloud, audio features re-uploaded or token ids only, RTT,
gate threshold, k) the hybrid is slower than edge-only, and by how much.

Definitions. The study defines OET = total − TTFT and OTPS = output tokens / OET, but its rows do
not add up that way: TTFT + OET exceeds the total in every row (edge 7.74 + 34.80 > 34.89), and
total − OET is 0.08–0.13 s in every row. The rows fit one reading: OET is the whole generation call
(prefill included) and the total adds ~0.1 s of pre- and post-processing; so a caption has
N = OTPS × OET tokens (73, 79 and 80) and the decode rate is (N − 1) / (OET − TTFT); the presets
``study-cpu-2core`` and ``study-a100`` are read that way (``profiles.study_decode_rate``). Taking
OTPS itself as the decode rate (the presets did until 2026-12-08) counts the prefill twice:
7.74 s + 72 / 2.10 tok/s = 42.0 s for the edge, where the study measured 34.89 s. Both readings are
priced; the puzzle is answered with the consistent one, which reproduces the two baselines, so only
the hybrid row is a prediction.

Everything here is computed from the trace and the study's published figures
(``reports.tables.STUDY``); nothing is typed in from a result.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from ..errors import UserError
from ..explore.synth import AlphaModel, synth_trace
from ..gates import parse_gate
from ..network import Network
from ..protocol import Accept, Policy, cloud_only, drafter_only
from ..simulate import CostModel, Replayer, profiles
from ..simulate.replay import FI
from ..simulate.timing import PARTS, cost_theta
from ..trace import load_trace, write_trace
from .tables import STUDY, STUDY_LABEL

#: The study's measured hybrid/edge-only ratio of total time per caption (43.87 / 34.89).
STUDY_RATIO = STUDY["speculative"]["total_s"] / STUDY["edge_3b"]["total_s"]

#: The axes of the puzzle. Gates from always-escalate down to an entropy threshold that never fires on the
#: study trace; k as the study discusses it (1 = plain decoding … 8); RTT from one data centre to a satellite hop.
GATES = ("always", "entropy:1.5", "entropy:2", "entropy:2.5", "entropy:3", "entropy:3.5")
KS = (1, 3, 5, 8)
RTTS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.5)
CACHES = ("stateful", "stateless")
PRIVACIES = ("features", "token-only")
#: Uplink bandwidths (bytes/s): what a re-upload of the audio features costs depends on it (2, 20, 200 Mbit/s).
UPLINKS = (2e6 / 8, 20e6 / 8, 200e6 / 8)
#: Without the bonus token (the study's protocol) and with it (sectrace's default).
BONUSES = (False, True)
#: The parts of a run spent on the network and in the cloud: what an escalation adds (timing.PARTS).
CALL_PARTS = ("uplink", "cloud_prefill", "cloud_verify", "cloud_decode", "downlink")
_CALL_IDX = [FI[f] for part in CALL_PARTS for f in PARTS[part]]

#: The study trace: a synthetic trace (explore.synth.AlphaModel) whose captions have the study's length
#: (N = OTPS × OET is 73–80 tokens in the study's rows; mean_length 72 gives 72–77 here).
STUDY_MEAN_LENGTH = 72.0
STUDY_MAX_NEW = 128


@dataclass(frozen=True)
class StudyPoint:
    """The study's setup as its text states it (sections 3.3–3.4, 4.3): k = 5 ("e.g."); an entropy gate that
    escalated nearly every block ("trigger-happy": modelled as always-escalate); rank ≤ 20 acceptance; the audio
    features and the whole accepted context sent with every escalation and verified in one pass (a stateless
    cloud); the accepted tokens plus the correction returned, no bonus token. RTT 10 ms is an assumption (both
    sides ran on one HPC cluster); uplink and downlink are sectrace's defaults (20 and 50 Mbit/s)."""

    k: int = 5
    gate: str = "always"
    accept: str = "rank:20"
    privacy: str = "features"
    cloud_cache: str = "stateless"
    bonus: bool = False
    rtt_s: float = 0.01
    up_Bps: float = 20e6 / 8

    def policy(self, max_new: int = STUDY_MAX_NEW) -> Policy:
        return _policy(self.k, self.gate, self.privacy, self.cloud_cache, max_new, self.accept, self.bonus)


def _policy(k, gate, privacy, cache, max_new, accept="rank:20", bonus=False) -> Policy:

    return Policy(k=k, gate=parse_gate(gate), gate_spec=gate, accept=Accept.parse(accept), privacy=privacy,
                  cloud_cache=cache, bonus=bonus, max_new_tokens=max_new)


# --- the study's rows and what they say ---------------------------------------------------------------------


def study_tokens(key: str) -> float:
    """Output tokens per caption in a study row: OTPS × OET (the study's own definition of OTPS)."""
    return STUDY[key]["otps"] * STUDY[key]["oet_s"]


def definitions() -> pl.DataFrame:
    """The study's rows and the arithmetic that shows its definitions do not hold: TTFT + OET ≠ total."""
    rows = []
    for key, v in STUDY.items():
        n = study_tokens(key)
        rows.append({"system": STUDY_LABEL[key], "TTFT (s)": v["ttft_s"], "OET (s)": v["oet_s"],
                     "total (s)": v["total_s"], "tokens N = OTPS×OET": n, "TTFT + OET (s)": v["ttft_s"] + v["oet_s"],
                     "total − (TTFT + OET) (s)": v["total_s"] - v["ttft_s"] - v["oet_s"],
                     "total − OET (s)": v["total_s"] - v["oet_s"],
                     "decode tok/s = (N−1)/(OET−TTFT)": (n - 1) / (v["oet_s"] - v["ttft_s"])})
    return pl.DataFrame(rows)


#: How each reading of the study's rows is named in tables.
READING_LABEL = {"consistent": "consistent reading (the presets)", "otps": "OTPS read as the decode rate"}


def study_costs(reading: str = "consistent") -> CostModel:
    """The study's devices as a cost model.

    ``consistent``: the presets study-cpu-2core and study-a100: decode rate = (N − 1) / (OET − TTFT) per row
    (``profiles.study_decode_rate``; see the module docstring), prefill = TTFT; the verify cost per extra token
    (4 ms) is the preset's assumption, the study did not time verification.
    ``otps``: OTPS read as the decode rate (what the presets did until 2026-12-08), kept to show that it
    counts the prefill twice."""
    if reading == "consistent":
        return profiles.base_cost(None, "study")
    if reading != "otps":
        raise UserError(f"unknown reading {reading!r} of the study's devices; use consistent or otps")
    e, c = STUDY["edge_3b"], STUDY["cloud_7b"]
    a100 = profiles.cloud_device("study-a100")
    return CostModel(edge_prefill_a=e["ttft_s"], edge_prefill_b=0.0, edge_step_a=1 / e["otps"], edge_step_c=0.0,
                     cloud_prefill_a=c["ttft_s"], cloud_prefill_b=0.0, cloud_step_a=1 / c["otps"], cloud_step_c=0.0,
                     verify_a=1 / c["otps"], verify_b=a100.verify_per_token_s, verify_c=0.0,
                     source=f"the study's Table 2 with OTPS as the decode rate: edge {e['otps']:.2f} tok/s after a "
                            f"{e['ttft_s']:g} s prefill, cloud {c['otps']:.2f} tok/s after {c['ttft_s']:g} s; "
                            f"{1000 * a100.verify_per_token_s:g} ms per extra verified token (assumed)")


def study_network(rtt_s: float, up_Bps: float = 20e6 / 8) -> Network:
    return Network(rtt_s=rtt_s, up_Bps=up_Bps)


# --- the study trace ------------------------------------------------------------------------------------------


def study_policies(max_new: int = STUDY_MAX_NEW, ks: Sequence[int] = KS, gates: Sequence[str] = GATES,
                   privacies: Sequence[str] = PRIVACIES, caches: Sequence[str] = CACHES,
                   bonuses: Sequence[bool] = BONUSES) -> list[Policy]:
    return [_policy(k, g, p, c, max_new, bonus=b)
            for b, c, p, g, k in itertools.product(bonuses, caches, privacies, gates, ks)]


def make_study_trace(path: Path, utterances: int = 12, seed: int = 0, ks: Sequence[int] = KS,
                     gates: Sequence[str] = GATES, progress=None, overwrite: bool = False) -> Path:
    """A synthetic trace with the study's caption length, explored with every policy of the puzzle grid (the
    cloud cache only changes timing, so stateful runs cover stateless ones) and the two baselines.

    Equivalent to ``sectrace trace synth PATH --mean-length 72 --max-new-tokens 128`` with these policies
    explored instead of the default set (which has no runs without the bonus token, as the study ran)."""

    pols = [drafter_only(STUDY_MAX_NEW), cloud_only(STUDY_MAX_NEW)]
    pols += study_policies(STUDY_MAX_NEW, ks, gates, PRIVACIES, ("stateful",))
    model = AlphaModel(mean_length=STUDY_MEAN_LENGTH, seed=seed)
    write_trace(path, *synth_trace(model, utterances, pols, progress=progress), overwrite=overwrite)
    return path


def _study_trace_matches(path: Path, utterances: int, ks, gates) -> bool:
    """Whether a study trace already in ``path`` was built for these settings (then it is reused)."""
    import json

    try:
        m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    want = {p.label for p in study_policies(STUDY_MAX_NEW, ks, gates, PRIVACIES, ("stateful",))}
    return (m.get("dataset", {}).get("n_utterances") == utterances
            and m.get("synthetic_model", {}).get("mean_length") == STUDY_MEAN_LENGTH
            and want <= set(m.get("exploration", {}).get("policies", [])))


# --- Table 2, side by side -----------------------------------------------------------------------------------


def _mean_runs(rep, theta):
    ok = rep.covered
    total = rep.total[ok] @ theta
    first = rep.first[ok] @ theta
    tokens = np.array([len(r.tokens) for r in rep.runs if r is not None], float)
    calls = np.array([r.escalations for r in rep.runs if r is not None], float)
    return ok, total, first, tokens, calls


def table2_comparison(rp: Replayer, point: StudyPoint = StudyPoint(),
                      readings: Sequence[str] = ("otps", "consistent")) -> pl.DataFrame:
    """The study's Table 2 (latency part) beside sectrace's prediction for the same devices, per reading.

    Simulated columns: TTFT = time to the first committed token; total = the caption's latency; OET = total −
    TTFT and OTPS = N / OET as the study defines them; N / total is what the study's OTPS column matches."""
    rows = []
    for key, v in STUDY.items():
        n = study_tokens(key)
        rows.append({"system": STUDY_LABEL[key], "source": "measured by the study (MER2024, 332 files)",
                     "tokens": n, "TTFT (s)": v["ttft_s"], "OET (s)": v["oet_s"], "OTPS (tok/s)": v["otps"],
                     "N / total (tok/s)": n / v["total_s"], "total (s)": v["total_s"],
                     "vs edge-only": v["total_s"] / STUDY["edge_3b"]["total_s"], "cloud calls": None})
    max_new = int(rp.trace.manifest["decoding"].get("max_new_tokens", STUDY_MAX_NEW))
    pols = (("edge-only", drafter_only(max_new)), ("cloud-only", cloud_only(max_new)),
            (f"hybrid ({point.policy(max_new).label}, RTT {1000 * point.rtt_s:g} ms)", point.policy(max_new)))
    for reading in readings:
        theta = cost_theta(study_costs(reading), point.rtt_s, *_net_args(study_network(point.rtt_s, point.up_Bps)))
        edge_total = None
        for name, pol in pols:
            ok, total, first, tokens, calls = _mean_runs(rp.replay(pol), theta)
            if not ok.any():
                raise UserError(f"no utterance of the trace covers {pol.label}; build the study trace with "
                                "`sectrace study` (no --trace) or explore that policy")
            t, f, n = float(total.mean()), float(first.mean()), float(tokens.mean())
            edge_total = t if name == "edge-only" else edge_total
            rows.append({"system": name, "source": f"sectrace, {READING_LABEL[reading]}", "tokens": n, "TTFT (s)": f,
                         "OET (s)": t - f, "OTPS (tok/s)": n / (t - f), "N / total (tok/s)": n / t, "total (s)": t,
                         "vs edge-only": t / edge_total, "cloud calls": float(calls.mean())})
    return pl.DataFrame(rows, strict=False)


def _net_args(net: Network):
    return net.up_Bps, net.down_Bps, net.overhead_bytes, net.expected_extra_s


# --- the puzzle -----------------------------------------------------------------------------------------------


def puzzle_grid(rp: Replayer, cost: CostModel | None = None, ks: Sequence[int] = KS, gates: Sequence[str] = GATES,
                privacies: Sequence[str] = PRIVACIES, caches: Sequence[str] = CACHES,
                rtts: Sequence[float] = RTTS, uplinks: Sequence[float] = UPLINKS,
                bonuses: Sequence[bool] = BONUSES, base: Network | None = None) -> pl.DataFrame:
    """Hybrid / edge-only mean latency over the axes, one row per (bonus, cache, privacy, gate, k, RTT, uplink).

    One replay per policy; every (RTT, uplink) pair is a column of one cost matrix. Means are over the
    utterances both the hybrid and edge-only cover; ``slower`` marks where the hybrid is slower than edge-only;
    ``ratio_per_token`` compares seconds per caption token (the study's hybrid wrote longer captions)."""
    cost = cost or study_costs("consistent")
    base = base or Network()
    max_new = int(rp.trace.manifest["decoding"].get("max_new_tokens", STUDY_MAX_NEW))
    r, u = (a.ravel() for a in np.meshgrid(np.asarray(rtts, float), np.asarray(uplinks, float), indexing="ij"))
    theta = cost_theta(cost, r, u, base.down_Bps, base.overhead_bytes, base.expected_extra_s)
    edge = rp.replay(drafter_only(max_new))
    edge_lat = edge.total @ theta[:, 0]  # no network in edge-only: the same in every column
    edge_tokens = np.array([len(x.tokens) if x is not None else 0 for x in edge.runs], float)
    rows = []
    for bonus, cache, privacy, gate, k in itertools.product(bonuses, caches, privacies, gates, ks):
        pol = _policy(k, gate, privacy, cache, max_new, bonus=bonus)
        rep = rp.replay(pol)
        ok = rep.covered & edge.covered
        if not ok.any():
            continue
        runs = [run_ for run_, good in zip(rep.runs, ok) if good]
        hyb = rep.total[ok] @ theta  # (utterances, columns)
        call = rep.total[ok][:, _CALL_IDX] @ theta[_CALL_IDX]  # network and cloud seconds, (utterances, columns)
        e = float(edge_lat[ok].mean())
        e_tok = e / float(edge_tokens[ok].mean())
        calls = float(np.mean([run_.escalations for run_ in runs]))
        share = float(np.mean([run_.escalations / max(run_.blocks, 1) for run_ in runs]))
        tokens = float(np.mean([len(run_.tokens) for run_ in runs]))
        for j in range(len(r)):
            h = float(hyb[:, j].mean())
            c = float(call[:, j].mean())
            rows.append({"bonus": bonus, "cloud_cache": cache, "privacy": privacy, "gate": gate, "k": k,
                         "rtt_s": float(r[j]), "up_Bps": float(u[j]), "covered": int(ok.sum()),
                         "utterances": len(ok), "escalation_share": share, "cloud_calls": calls, "tokens": tokens,
                         "hybrid_s": h, "edge_only_s": e, "ratio": h / e, "ratio_per_token": (h / tokens) / e_tok,
                         "extra_per_call_s": (h - e) / calls if calls else 0.0,
                         "call_s": c / calls if calls else 0.0,
                         "edge_saved_per_call_s": (e - (h - c)) / calls if calls else 0.0,
                         "slower": h > e * (1 + 1e-12)})
    if not rows:
        raise UserError("the trace covers none of the puzzle's policies; build the study trace with `sectrace study`")
    return pl.DataFrame(rows)


def _close(col: str, value: float):
    return (pl.col(col) - value).abs() <= 1e-9 * max(1.0, abs(value))


def _where(grid: pl.DataFrame, point: StudyPoint, free: Sequence[str] = ()) -> pl.DataFrame:
    """Rows at the study's conditions on every axis except those in ``free``."""
    conds = {"bonus": pl.col("bonus") == point.bonus, "cloud_cache": pl.col("cloud_cache") == point.cloud_cache,
             "privacy": pl.col("privacy") == point.privacy, "gate": pl.col("gate") == point.gate,
             "k": pl.col("k") == point.k, "rtt_s": _close("rtt_s", point.rtt_s),
             "up_Bps": _close("up_Bps", point.up_Bps)}
    free = {"gate" if f == "escalation_share" else f for f in free}
    for name, cond in conds.items():
        if name not in free:
            grid = grid.filter(cond)
    return grid


def at_point(grid: pl.DataFrame, point: StudyPoint = StudyPoint()) -> dict:
    """The grid's row at the study's conditions."""
    sel = _where(grid, point)
    if sel.is_empty():
        raise UserError(f"the trace covers no run at the study's conditions ({point.policy().label}); build the "
                        "study trace with `sectrace study --out DIR` (no --trace)")
    return sel.row(0, named=True)


def puzzle_answer(grid: pl.DataFrame, point: StudyPoint = StudyPoint()) -> dict:
    """What the grid says about the puzzle, as numbers: where the hybrid is slower than edge-only, and by how much."""
    out = {"study_ratio": STUDY_RATIO, "study_ratio_per_token": _study_ratio_per_token(), "point": at_point(grid, point)}
    # the same conditions with a stateful cloud that returns the bonus token: what the study's setup gave up
    contrast = _where(grid, StudyPoint(**{**point.__dict__, "cloud_cache": "stateful", "bonus": True}))
    out["contrast"] = contrast.row(0, named=True) if contrast.height else None
    # conditions where the hybrid calls the cloud at all (a gate that never fires is edge-only by another name)
    by = grid.filter(pl.col("cloud_calls") > 0).group_by("bonus", "cloud_cache", "privacy").agg(
        pl.col("slower").mean().alias("share_slower"), pl.col("ratio").min().alias("ratio_min"),
        pl.col("ratio").max().alias("ratio_max"))
    out["by_bonus_cache_privacy"] = by.sort("bonus", "cloud_cache", "privacy").to_dicts()
    # the smallest RTT at which each (bonus, cache, privacy) is slower, at the study's k, gate and uplink
    first = {}
    sub = grid.filter((pl.col("k") == point.k) & (pl.col("gate") == point.gate) & _close("up_Bps", point.up_Bps))
    for (bonus, cache, privacy), g in sub.group_by("bonus", "cloud_cache", "privacy"):
        slow = g.filter(pl.col("slower")).sort("rtt_s")
        name = f"{'bonus' if bonus else 'no bonus'}/{cache}/{privacy}"
        first[name] = None if slow.is_empty() else float(slow["rtt_s"][0])
    out["slower_from_rtt_s"] = dict(sorted(first.items()))
    out["never_faster_without_bonus"] = bool(grid.filter(~pl.col("bonus"))["ratio"].min() >= 1 - 1e-12)
    return out


def _study_ratio_per_token() -> float:
    return ((STUDY["speculative"]["total_s"] / study_tokens("speculative"))
            / (STUDY["edge_3b"]["total_s"] / study_tokens("edge_3b")))


# --- the figure ---------------------------------------------------------------------------------------------


_STYLE = {("stateful", "features"): ("#1f77b4", "-"), ("stateful", "token-only"): ("#1f77b4", "--"),
          ("stateless", "features"): ("#d62728", "-"), ("stateless", "token-only"): ("#d62728", "--")}
_PANELS = (("rtt_s", "RTT (ms)", 1000.0, True), ("escalation_share", "blocks escalated (%), gate thresholds", 100.0,
                                                  False),
           ("k", "block size k", 1.0, False), ("up_Bps", "uplink (Mbit/s)", 8e-6, True))


def figure(grid: pl.DataFrame, point: StudyPoint = StudyPoint()):
    """Hybrid / edge-only latency over RTT, escalation share (gate threshold), k and uplink, one line per (cache,
    privacy); the other axes held at the study's point. Top row: no bonus token (the study's protocol); bottom:
    with it. The study's measurement is the star (per caption; hollow: per token), sectrace's prediction at the
    study's conditions the ringed dot; above 1 the hybrid is slower than edge-only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bonuses = sorted(set(grid["bonus"].to_list()))
    fig, axes = plt.subplots(len(bonuses), 4, figsize=(18, 4.2 * len(bonuses)), sharey="row", squeeze=False)
    for row, bonus in enumerate(bonuses):
        pt = StudyPoint(**{**point.__dict__, "bonus": bonus})
        here = at_point(grid, pt)
        for ax, (col, label, scale, log) in zip(axes[row], _PANELS):
            sub = _where(grid, pt, free=(col, "cloud_cache", "privacy"))
            for (cache, privacy), (colour, ls) in _STYLE.items():
                g = sub.filter((pl.col("cloud_cache") == cache) & (pl.col("privacy") == privacy)).sort(col)
                if not g.is_empty():
                    ax.plot(g[col].to_numpy() * scale, g["ratio"].to_numpy(), color=colour, ls=ls, marker="o", ms=3.5,
                            label=f"{cache}, {privacy}")
            x = here[col] * scale
            if not bonus:
                ax.scatter([x], [STUDY_RATIO], marker="*", s=220, c="gold", edgecolors="black", zorder=5,
                           label=f"the study, measured ({STUDY_RATIO:.2f}; per caption)")
                ax.scatter([x], [_study_ratio_per_token()], marker="*", s=160, c="none", edgecolors="black",
                           zorder=5, label=f"the study per token ({_study_ratio_per_token():.2f})")
            ax.scatter([x], [here["ratio"]], s=90, facecolors="none", edgecolors="black", linewidths=1.5, zorder=6,
                       label=f"sectrace at the study's conditions ({here['ratio']:.2f})")
            ax.axhline(1.0, color="grey", lw=1)
            ax.set_xlabel(label)
            if log:
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel(("with the bonus token" if bonus else "no bonus token (the study)")
                                + "\nhybrid / edge-only latency")
        axes[row][-1].legend(fontsize=7, loc="best")
    fixed = (f"held at the study's point: k={point.k}, gate {point.gate}, RTT {1000 * point.rtt_s:g} ms, uplink "
             f"{point.up_Bps * 8e-6:g} Mbit/s; gates {', '.join(sorted(set(grid['gate'].to_list())))}")
    fig.suptitle("When is the hybrid slower than edge-only? Above 1: slower. The study's devices, read consistently.\n"
                 + fixed, fontsize=10)
    fig.tight_layout()
    return fig


def figure_png(grid: pl.DataFrame, point: StudyPoint = StudyPoint()) -> bytes:
    import matplotlib.pyplot as plt

    fig = figure(grid, point)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})  # tight_layout already: one draw
    plt.close(fig)
    return buf.getvalue()


# --- one call for the report and one for the CLI ---------------------------------------------------------------


@dataclass
class StudyResult:
    table: pl.DataFrame
    definitions: pl.DataFrame
    grid: pl.DataFrame
    answer: dict
    point: StudyPoint
    trace_path: str


def run(trace_path: Path | None = None, work_dir: Path | None = None, utterances: int = 12,
        point: StudyPoint = StudyPoint(), ks: Sequence[int] = KS, gates: Sequence[str] = GATES,
        rtts: Sequence[float] = RTTS, uplinks: Sequence[float] = UPLINKS, progress=None) -> StudyResult:
    """Everything the section and the command show. Without a trace, the study trace is built in ``work_dir``
    (and reused from there when one built for the same settings is there)."""

    if point.k not in ks or point.gate not in gates or not any(abs(r - point.rtt_s) < 1e-12 for r in rtts) \
            or not any(abs(x - point.up_Bps) < 1e-9 * point.up_Bps for x in uplinks):
        raise UserError(f"the axes must include the study's conditions (k={point.k}, gate {point.gate}, "
                        f"RTT {1000 * point.rtt_s:g} ms, uplink {point.up_Bps * 8e-6:g} Mbit/s)")
    if trace_path is None:
        if work_dir is None:
            raise UserError("give a trace or a directory to build the study trace in")
        trace_path = Path(work_dir) / "study-trace"
        if not _study_trace_matches(trace_path, utterances, ks, gates):
            make_study_trace(trace_path, utterances=utterances, ks=ks, gates=gates, progress=progress,
                             overwrite=True)
    rp = Replayer(load_trace(trace_path))
    grid = puzzle_grid(rp, ks=ks, gates=gates, rtts=rtts, uplinks=uplinks)
    return StudyResult(table2_comparison(rp, point), definitions(), grid, puzzle_answer(grid, point), point,
                       str(trace_path))


def summary_lines(res: StudyResult) -> list[str]:
    """The answer in a few sentences, with the numbers (the command prints them; the section shows them)."""
    a, p, here = res.answer, res.point, res.answer["point"]
    lines = [f"at the study's conditions ({p.policy().label}, RTT {1000 * p.rtt_s:g} ms, uplink "
             f"{p.up_Bps * 8e-6:g} Mbit/s) the hybrid takes {here['ratio']:.2f}x edge-only ({here['hybrid_s']:.1f} s "
             f"vs {here['edge_only_s']:.1f} s; {here['ratio_per_token']:.2f}x per token); the study measured "
             f"{a['study_ratio']:.2f}x ({a['study_ratio_per_token']:.2f}x per token)",
             f"each of its {here['cloud_calls']:.1f} cloud calls spends {here['call_s']:.2f} s on the network and in "
             f"the cloud and changes the edge's own time by {-here['edge_saved_per_call_s']:+.2f} s: "
             f"{here['extra_per_call_s']:+.2f} s per call in all"]
    c = a.get("contrast")
    if c is not None:
        lines.append(f"the same with a stateful cloud that returns the bonus token: {c['call_s']:.2f} s per call on the "
                     f"network and in the cloud, {c['edge_saved_per_call_s']:.2f} s of edge time saved per call, "
                     f"{c['ratio']:.2f}x edge-only")
    if a["never_faster_without_bonus"]:
        lines.append("without the bonus token the hybrid is never faster than edge-only on this trace: the edge "
                     "drafts every token either way, so a cloud call can only add time")
    for r in a["by_bonus_cache_privacy"]:
        lines.append(f"{'with' if r['bonus'] else 'without'} the bonus token, {r['cloud_cache']}, {r['privacy']}: "
                     f"slower than edge-only in {100 * r['share_slower']:.0f}% of the conditions that call the cloud "
                     f"(hybrid/edge {r['ratio_min']:.2f}-{r['ratio_max']:.2f})")
    slow = [f"{k} {'never' if v is None else f'from {1000 * v:g} ms'}" for k, v in a["slower_from_rtt_s"].items()]
    lines.append(f"with k={p.k} and gate {p.gate}, slower than edge-only at RTT: " + "; ".join(slow))
    return lines


def numbers_markdown(res: StudyResult) -> str:
    """The numbers docs/study.md quotes, as Markdown (``sectrace study`` writes them to OUT/numbers.md; a test
    checks the page against them)."""
    def f(v, d=2):
        return "–" if v is None else f"{v:.{d}f}"

    out = ["| study row | TTFT (s) | OET (s) | total (s) | N = OTPS × OET | TTFT + OET (s) | total − OET (s) | "
           "decode tok/s = (N − 1)/(OET − TTFT) |", "|---|---|---|---|---|---|---|---|"]
    for r in res.definitions.iter_rows(named=True):
        out.append(f"| {r['system']} | {f(r['TTFT (s)'])} | {f(r['OET (s)'])} | {f(r['total (s)'])} | "
                   f"{f(r['tokens N = OTPS×OET'], 1)} | {f(r['TTFT + OET (s)'])} | {f(r['total − OET (s)'])} | "
                   f"{f(r['decode tok/s = (N−1)/(OET−TTFT)'])} |")
    out += ["", "| system | source | tokens N | TTFT (s) | OET (s) | OTPS (tok/s) | N / total (tok/s) | total (s) | "
            "vs edge-only | cloud calls |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res.table.iter_rows(named=True):
        out.append(f"| {r['system']} | {r['source']} | {f(r['tokens'], 1)} | {f(r['TTFT (s)'])} | {f(r['OET (s)'])} | "
                   f"{f(r['OTPS (tok/s)'])} | {f(r['N / total (tok/s)'])} | {f(r['total (s)'])} | "
                   f"{f(r['vs edge-only'])} | {f(r['cloud calls'], 1)} |")
    out += ["", "| bonus token | cloud | privacy | slower than edge-only (of the conditions that call the cloud) | "
            "hybrid / edge-only |", "|---|---|---|---|---|"]
    for r in res.answer["by_bonus_cache_privacy"]:
        out.append(f"| {'yes' if r['bonus'] else 'no'} | {r['cloud_cache']} | {r['privacy']} | "
                   f"{100 * r['share_slower']:.0f}% | {r['ratio_min']:.2f}–{r['ratio_max']:.2f} |")
    per_mode = ("with the bonus token,", "without the bonus token,")  # the table above says these
    out += [""] + [f"- {line}" for line in summary_lines(res) if not line.startswith(per_mode)]
    return "\n".join(out) + "\n"


def _html_table(df: pl.DataFrame) -> str:
    def cell(v):
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in df.iter_rows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section_html(res: StudyResult) -> str:
    png = base64.b64encode(figure_png(res.grid, res.point)).decode()
    items = "".join(f"<li>{html.escape(x)}</li>" for x in summary_lines(res))
    return (
        "<p>The study's Table 2 beside sectrace's prediction for the same devices, on a trace with the study's caption "
        f"length ({html.escape(res.trace_path)}). The study's rows do not add up as it defines them (TTFT + OET "
        "&ne; total in every row); they fit OET = the whole generation call, so N = OTPS &times; OET tokens and a "
        "decode rate of (N &minus; 1)/(OET &minus; TTFT), the reading the presets study-cpu-2core and study-a100 use. "
        "It reproduces both baselines, so only the hybrid row is a prediction; reading OTPS itself as the decode "
        "rate counts the prefill twice. Definitions and numbers: docs/study.md.</p>"
        + _html_table(res.definitions) + _html_table(res.table) + f"<ul>{items}</ul>"
        + f'<img alt="hybrid / edge-only latency over the axes" src="data:image/png;base64,{png}">')


def study_section(trace_path: Path | None = None, work_dir: Path | None = None,
                  utterances: int = 12) -> tuple[str, str]:
    """The report's hook: (title, HTML) of a self-contained section (tables and the figure embedded).

    Without a trace it builds a small study trace in ``work_dir`` (a temporary directory if none): seconds."""
    import tempfile

    if trace_path is None and work_dir is None:
        with tempfile.TemporaryDirectory(prefix="sectrace-study-") as tmp:
            return study_section(None, Path(tmp), utterances)
    res = run(trace_path, work_dir, utterances=utterances)
    return "The study's Table 2, explained", section_html(res)
