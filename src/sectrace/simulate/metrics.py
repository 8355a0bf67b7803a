"""The summary metrics, defined once: what `simulate`, `sweep` and their outputs report per policy and configuration.

Every summary number is a function of per-utterance counts and times (the rows `simulate --out` writes),
so each metric is declared below as *what is summed over the covered utterances, divided by what*; the
same declaration computes the point value and, over bootstrap resamples of the utterances, its 95 %
confidence interval. Rates are ratios of totals (a long caption weighs more than a short one), as vLLM
computes them; per-caption figures are totals divided by the number of covered utterances.

The speculative-decoding metrics carry vLLM's names and definitions (``vllm/v1/spec_decode/metrics.py``
and the v0 ``spec_decode/metrics.py``), with one difference of setting: vLLM verifies every drafted
block, while here a gate chooses which blocks reach the cloud, so vLLM's "drafts" are this protocol's
*verify calls* and its "draft tokens" are the drafted tokens *sent for verification*.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..protocol import Verify
from . import aggregate as agg

#: Bootstrap resamples per confidence interval (scipy.stats.bootstrap, percentile method, fixed seed).
N_RESAMPLES = 2000
#: Seed of the bootstrap: the same results give the same intervals on every run.
SEED = 0
CONFIDENCE = 0.95
#: Latency percentiles reported per row (over the covered utterances, linear interpolation).
PERCENTILES = (50, 90, 95)
#: Metrics a sweep gives intervals for, and its resamples: a sweep prices thousands of configurations, and
#: an interval costs a bootstrap distribution per configuration, so the breakdown parts get none there
#: (`simulate` gives every metric its interval).
SWEEP_TIMED_CI = ("latency_s", "ttft_s", "latency_overlap_s", "tokens_per_s", "speedup_vs_edge", "speedup_vs_cloud")
SWEEP_RESAMPLES = 1000
#: Most bootstrap statistics held at once (outputs × resamples) before configurations are split in chunks.
_MAX_CELLS = 8_000_000


@dataclass(frozen=True)
class Metric:
    """One summary column: ``(Σ num) / (Σ den) + offset`` over the covered utterances of a row.

    ``num`` and ``den`` name per-utterance columns (added together when several); ``den=()`` divides
    by the number of covered utterances (a mean per caption). A metric is *timed* (one value per
    configuration) when any of its columns is."""

    name: str
    num: tuple[str, ...]
    den: tuple[str, ...] = ()
    offset: float = 0.0
    doc: str = ""

    def value(self, columns) -> float:
        """The metric over plain per-caption columns (a mapping name → values), without intervals: what a
        table of played captions (a fleet run) reports by the same definition."""
        num = float(sum(np.sum(columns[c]) for c in self.num))
        den = float(sum(np.sum(columns[c]) for c in self.den)) if self.den else float(len(columns[self.num[0]]))
        return num / den + self.offset if den else float("nan")


#: Per-utterance count columns (the same for every configuration) the metrics read.
COUNTS = ("drafted", "verify_calls", "verified", "accepted", "emitted", "escalations", "cloud_written", "n_tokens",
          "cloud_tokens", "bytes_up", "bytes_down", "audio_bytes_up", "exact_match_cloud", "similarity_cloud")

#: The overhead breakdown's parts (simulate/overhead.py), as per-utterance seconds ``t_<part>_s``.
PART_COLUMNS = tuple(f"t_{p}_s" for p in ("edge_prefill", "edge_drafting", "wasted_drafts", "gate", "uplink",
                                          "queueing", "cloud_prefill", "cloud_verify", "resync", "cloud_decode",
                                          "downlink"))

METRICS: tuple[Metric, ...] = (
    # --- speculative decoding, vLLM's names; counts are per caption where vLLM keeps running totals ---------
    Metric("num_drafts", ("verify_calls",),
           doc="verify calls per caption: drafted blocks the cloud judged (vLLM spec_decode_num_drafts); 0 for "
               "cloud-only decoding, which drafts nothing"),
    Metric("num_draft_tokens", ("verified",),
           doc="drafted tokens sent to the cloud for verification, per caption (vLLM spec_decode_num_draft_tokens)"),
    Metric("num_accepted_tokens", ("accepted",),
           doc="drafted tokens the cloud accepted, per caption (vLLM spec_decode_num_accepted_tokens)"),
    Metric("num_emitted_tokens", ("emitted",),
           doc="tokens committed by verify calls, per caption: accepted + the correction or bonus token of each "
               "call (vLLM v0 emitted_tokens)"),
    Metric("drafted_tokens", ("drafted",),
           doc="every token the edge drafted, escalated or not, per caption (no vLLM counterpart: vLLM verifies "
               "every draft)"),
    Metric("draft_acceptance_rate", ("accepted",), ("verified",),
           doc="Σ accepted / Σ draft tokens: the share of verified drafted tokens the cloud kept "
               "(vLLM draft_acceptance_rate)"),
    Metric("mean_acceptance_length", ("accepted",), ("verify_calls",), offset=1.0,
           doc="1 + Σ accepted / Σ drafts: tokens per verify call, counting the correction or bonus token by "
               "convention (vLLM mean acceptance length)"),
    Metric("system_efficiency", ("emitted",), ("verified", "verify_calls"),
           doc="Σ emitted / Σ (block length + 1) over verify calls: tokens emitted over those a perfect drafter "
               "would emit (vLLM v0 system_efficiency; equals emitted / (drafts·(k+1)) when every block has k "
               "tokens)"),
    # --- the cloud's share -------------------------------------------------------------------------------------
    Metric("cloud_calls", ("escalations",),
           doc="requests to the cloud per caption (a cloud-only caption is one streamed request)"),
    Metric("cloud_written_share", ("cloud_written",), ("n_tokens",),
           doc="share of caption tokens the cloud wrote: Σ (corrections + bonus tokens) / Σ tokens (1 for "
               "cloud-only, 0 for edge-only)"),
    Metric("cloud_tokens", ("cloud_tokens",),
           doc="tokens the cloud ran through verify passes or decode steps, per caption (prefill excluded)"),
    Metric("bytes_up", ("bytes_up",), doc="payload bytes edge → cloud per caption (framing excluded)"),
    Metric("bytes_down", ("bytes_down",), doc="payload bytes cloud → edge per caption"),
    Metric("audio_bytes_up", ("audio_bytes_up",), doc="audio-derived bytes uploaded per caption"),
    # --- the caption -------------------------------------------------------------------------------------------
    Metric("n_tokens", ("n_tokens",), doc="caption tokens per caption"),
    Metric("exact_match_cloud", ("exact_match_cloud",),
           doc="share of captions identical, token for token, to the cloud-only caption"),
    Metric("similarity_cloud", ("similarity_cloud",),
           doc="mean of 1 − token edit distance / longer length, against the cloud-only caption"),
    # --- time (one value per configuration) --------------------------------------------------------------------
    Metric("ttft_s", ("ttft_s",), doc="mean time to the first committed token (s)"),
    Metric("latency_s", ("latency_s",), doc="mean time to the whole caption (s)"),
    Metric("latency_overlap_s", ("latency_overlap_s",),
           doc="mean latency with an edge that keeps drafting during verification (s)"),
    Metric("overlap_hidden_s", ("overlap_hidden_s",), doc="mean seconds that overlap hides (s)"),
    Metric("tokens_per_s", ("n_tokens",), ("latency_s",), doc="Σ caption tokens / Σ latency: decode throughput"),
    *(Metric(p, (p,), doc="mean seconds per caption in this part of the run; the parts add up to latency_s")
      for p in PART_COLUMNS),
)

#: Paired comparisons with the baselines, over the utterances all three cover (``paired_covered``).
SPEEDUPS: tuple[Metric, ...] = (
    Metric("speedup_vs_edge", ("edge_latency_s",), ("paired_latency_s",),
           doc="Σ edge-only latency / Σ this policy's latency on the same utterances: >1 is faster than drafting "
               "alone (paired: one resample draws the same utterances for both)"),
    Metric("speedup_vs_cloud", ("cloud_latency_s",), ("paired_latency_s",),
           doc="Σ cloud-only latency / Σ this policy's latency on the same utterances (paired)"),
)

#: Per-utterance columns that depend on the configuration (seconds).
TIMED = ("ttft_s", "latency_s", "latency_overlap_s", "overlap_hidden_s", *PART_COLUMNS)
#: What a sweep gives intervals: every metric that does not depend on the configuration, and SWEEP_TIMED_CI.
SWEEP_CI = tuple(m.name for m in METRICS if not set(m.num + m.den) & set(TIMED)) + SWEEP_TIMED_CI

#: How the intervals are computed, for --json readers.
BOOTSTRAP = {"confidence": CONFIDENCE, "resamples": N_RESAMPLES, "sweep_resamples": SWEEP_RESAMPLES, "seed": SEED,
             "method": "percentile bootstrap over utterances (scipy.stats.bootstrap); rates are ratios of totals "
                       "recomputed per resample; speedups are paired: a resample draws the same utterances for a "
                       "policy and its baselines", "bounds": "<metric>_lo, <metric>_hi"}

DEFINITIONS = {m.name: m.doc for m in (*METRICS, *SPEEDUPS)}
DEFINITIONS.update({
    "acceptance_rate_per_pos": "per draft position i: Σ verify calls that accepted position i / Σ drafts "
                               "(vLLM num_accepted_tokens_per_pos / num_drafts); no interval",
    **{f"latency_p{q}_s": f"{q}th percentile of latency over the covered utterances (s); no interval"
       for q in PERCENTILES},
    "utterances": "utterances in the trace", "covered": "utterances whose run stayed in the explored trie: the "
    "means average these", "paired_covered": "utterances this policy, edge-only and cloud-only all cover: the "
    "speedups compare these",
})


def utterance_counts(runs, k: int) -> dict[str, np.ndarray]:
    """Per utterance (NaN where the run is None, a coverage miss): the protocol counts the metrics read,
    and ``accepted_per_pos`` (utterances × k): verify calls in which draft position i was accepted."""

    n = len(runs)
    names = ("drafted", "blocks", "escalations", "verify_calls", "verified", "accepted", "corrected", "bonus_tokens",
             "emitted", "n_tokens", "wasted")
    out = {c: np.full(n, np.nan) for c in names}
    per_pos = np.full((n, max(k, 0)), np.nan)
    for u, r in enumerate(runs):
        if r is None:
            continue
        calls = emitted = 0
        pos = np.zeros(max(k, 0))
        for ev in r.events:
            if type(ev) is Verify:
                calls += 1
                emitted += ev.accepted + ev.corrected + ev.bonus
                pos[:ev.accepted] += 1
        vals = {"drafted": r.drafted, "blocks": r.blocks, "escalations": r.escalations, "verify_calls": calls,
                "verified": r.verified, "accepted": r.accepted, "corrected": r.corrected, "bonus_tokens": r.bonus,
                "emitted": emitted, "n_tokens": len(r.tokens), "wasted": r.wasted}
        for c in names:
            out[c][u] = vals[c]
        per_pos[u] = pos
    out["accepted_per_pos"] = per_pos
    return out


def bootstrap_weights(n: int, stat, *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                      confidence: float = CONFIDENCE):
    """Point value and bootstrap CI of a statistic of ``n`` resampling units (utterances, clips).

    ``stat`` maps weights of shape (R, n), how many times each unit is drawn in each of R resamples,
    to values (R, M); the point value is ``stat`` at weight 1 everywhere. Units are resampled with
    replacement by scipy.stats.bootstrap over their indices (percentile method, fixed seed), so every
    quantity a resample touches draws the same units: statistics comparing two policies on the same
    utterances are paired. Returns three (M,) arrays; the interval is NaN with fewer than two units,
    or where some resamples leave the statistic undefined (e.g. no verify call drawn)."""
    from scipy.stats import bootstrap

    with np.errstate(invalid="ignore", divide="ignore"):
        point = np.asarray(stat(np.ones((1, n))), float)[0]
    if n < 2:
        nan = np.full(point.shape, np.nan)
        return point, nan, nan.copy()

    def statistic(idx, axis=-1):
        idx = np.asarray(idx, dtype=np.intp)
        lead = idx.shape[:-1]
        flat = idx.reshape(-1, n)
        r = flat.shape[0]
        w = np.bincount((flat + n * np.arange(r)[:, None]).ravel(), minlength=r * n).reshape(r, n).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            val = np.asarray(stat(w), float)  # (resamples, M)
        return np.moveaxis(val.reshape(*lead, -1), -1, 0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a statistic undefined in some resamples gives a NaN interval, said above
        res = bootstrap((np.arange(n),), statistic, n_resamples=n_resamples, vectorized=True, axis=-1,
                        confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return point, np.asarray(ci.low, float).reshape(point.shape), np.asarray(ci.high, float).reshape(point.shape)


def _ratio_stat(metrics, counts, timed, lo_c, hi_c):
    """The statistic of one group of metrics over configurations ``lo_c:hi_c``: weights (R, utterances) →
    (R, metrics × configurations), each metric ``Σ num / Σ den + offset`` under the weights.

    Sums are taken column by column (:func:`.aggregate.sums`): a count column is one weighted sum repeated
    across the configurations, a factored timed column is (w @ features) @ theta, so no utterances ×
    configurations array is built for a mean or its resamples."""
    cw = hi_c - lo_c

    def stat(w):
        got: dict[str, np.ndarray] = {}

        def total(c):
            if c not in got:
                if c in timed:
                    got[c] = agg.sums(timed[c], w, lo_c, hi_c)
                else:
                    got[c] = np.broadcast_to((w @ np.asarray(counts[c], float))[:, None], (w.shape[0], cw))
            return got[c]

        r = w.shape[0]
        out = np.empty((r, len(metrics) * cw))
        for j, m in enumerate(metrics):
            num = total(m.num[0]) if len(m.num) == 1 else sum(total(c) for c in m.num)
            den = (total(m.den[0]) if len(m.den) == 1 else sum(total(c) for c in m.den)) if m.den else \
                w.sum(axis=1)[:, None]
            sl = out[:, j * cw:(j + 1) * cw]
            np.divide(num, den, out=sl)
            if m.offset:
                sl += m.offset
        return out

    return stat


def _summarise_group(metrics, counts, timed, n_cfg, ci, out, n_resamples):
    """Fill ``out`` with the metrics over one set of utterances, with intervals for those ``ci`` names,
    chunked by configuration so the bootstrap distributions held at once stay bounded."""
    timed_names = [m for m in metrics if any(c in timed for c in (*m.num, *m.den))]
    plain = [m for m in metrics if m not in timed_names]
    n = len(next(iter(counts.values()))) if counts else next(iter(timed.values())).shape[0]
    for group, width in ((plain, 1), (timed_names, n_cfg)):
        for with_ci in (True, False):
            part = [m for m in group if (m.name in ci) == with_ci]
            if not part:
                continue
            step = max(1, _MAX_CELLS // (n_resamples * len(part))) if width > 1 and with_ci else width
            for lo_c in range(0, width, step):
                hi_c = min(width, lo_c + step)
                cw = hi_c - lo_c
                stat = _ratio_stat(part, counts, timed, lo_c, hi_c)
                if with_ci:
                    point, low, high = bootstrap_weights(n, stat, n_resamples=n_resamples)
                else:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        point = stat(np.ones((1, n)))[0]
                for j, m in enumerate(part):
                    sl = slice(j * cw, (j + 1) * cw)
                    vals = [(m.name, point)] + ([(f"{m.name}_lo", low), (f"{m.name}_hi", high)] if with_ci else [])
                    for key, arr in vals:
                        if width == 1:
                            out[key] = np.full(n_cfg, arr[sl][0])
                        else:
                            out.setdefault(key, np.full(n_cfg, np.nan))[lo_c:hi_c] = arr[sl]


def _percentiles(lat, n: int, n_cfg: int) -> dict[str, np.ndarray]:
    """Latency percentiles per configuration: the one summary that needs every utterance's value, so the
    values are made for one block of configurations at a time (at most :data:`_MAX_CELLS` // 8 of them),
    sorted along the utterances and read by :func:`sorted_percentile`."""
    out = {q: np.empty(n_cfg) for q in PERCENTILES}
    step = max(1, (_MAX_CELLS // 8) // max(n, 1))
    for lo in range(0, n_cfg, step):
        hi = min(n_cfg, lo + step)
        v = agg.by_config(lat, lo, hi)
        v.sort(axis=1)
        for q in PERCENTILES:
            out[q][lo:hi] = sorted_percentile(v, q)
    return {f"latency_p{q}_s": v for q, v in out.items()}


def sorted_percentile(s: np.ndarray, q: float) -> np.ndarray:
    """``np.percentile(s, q, axis=1)`` (linear interpolation) of rows already sorted, bit for bit.

    np.percentile partitions every row again and costs ~7× the sort for 40 utterances; on sorted rows the
    percentile is two columns and numpy's own interpolation (``(n - 1)·q`` and its ``_lerp``, which
    computes from the upper point when the weight is ≥ 0.5), tested against np.percentile. A row with a
    NaN sorts it last, and numpy's answer for such a row (NaN) is kept."""
    n = s.shape[1]
    virtual = (n - 1) * np.true_divide(q, 100)
    if virtual >= n - 1:
        val = s[:, -1].copy()
    else:
        prev = int(np.floor(virtual))
        gamma = virtual - prev
        a, b = s[:, prev], s[:, prev + 1]
        diff = b - a
        val = b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma
    val[np.isnan(s[:, -1])] = np.nan
    return val


def summary_columns(counts: dict[str, np.ndarray], timed: dict[str, np.ndarray], n_cfg: int, *,
                    accepted_per_pos: np.ndarray | None = None, baselines: dict[str, np.ndarray] | None = None,
                    ci=True, n_resamples: int = N_RESAMPLES) -> dict[str, np.ndarray]:
    """The summary of one policy: every metric of :data:`METRICS` (and :data:`SPEEDUPS` with ``baselines``),
    with ``_lo``/``_hi`` bootstrap 95 % bounds, one value per configuration. ``ci``: True (every metric),
    False (none) or the names of the metrics that get bounds.

    ``counts``: per covered utterance, the :data:`COUNTS` columns (their protocol names; ``emitted`` and
    ``cloud_written`` are derived here when absent). ``timed``: per covered utterance × configuration,
    ``ttft_s``, ``latency_s``, ``latency_overlap_s``, ``overlap_hidden_s`` and any ``t_<part>_s``, each an
    array or a factored :class:`.aggregate.Linear` (means and intervals then never build the array).
    ``baselines``: ``edge_latency_s`` and ``cloud_latency_s`` on the same utterances × configurations
    (NaN where the baseline misses the utterance), arrays or :class:`.aggregate.Linear`. Only covered utterances may be passed: a row's means
    never mix in a run that left the trie."""
    counts = dict(counts)
    if "cloud_written" not in counts:
        counts["cloud_written"] = counts["corrected"] + counts["bonus_tokens"]
    n = len(counts["n_tokens"])
    out: dict[str, np.ndarray] = {}
    if n == 0:
        return out
    have = set(counts) | set(timed)
    metrics = [m for m in METRICS if set(m.num) | set(m.den) <= have]
    every = {m.name for m in (*METRICS, *SPEEDUPS)}
    ci = every if ci is True else set() if not ci else set(ci)
    _summarise_group(metrics, counts, timed, n_cfg, ci, out, n_resamples)
    lat = timed["latency_s"]
    out.update(_percentiles(lat, n, n_cfg))
    if accepted_per_pos is not None and accepted_per_pos.shape[1]:
        drafts = counts["verify_calls"].sum()
        rates = (accepted_per_pos.sum(axis=0) / drafts).tolist() if drafts else None
        out["acceptance_rate_per_pos"] = [rates] * n_cfg
    if baselines is not None:
        both = ~(agg.nan_rows(baselines["edge_latency_s"]) | agg.nan_rows(baselines["cloud_latency_s"]))
        out["paired_covered"] = np.full(n_cfg, int(both.sum()))
        if both.any():
            pair = {"edge_latency_s": agg.rows(baselines["edge_latency_s"], both),
                    "cloud_latency_s": agg.rows(baselines["cloud_latency_s"], both),
                    "paired_latency_s": agg.rows(lat, both)}
            _summarise_group(list(SPEEDUPS), {}, pair, n_cfg, ci, out, n_resamples)
    return out
