"""Cost models (how long model calls take), as plain data; the network is ``sectrace.network``.

Every cost is linear in what the schedule counts, which is what lets the closed-form engine
price thousands of configurations with one matrix product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from ..errors import UserError

#: The fields of a CostModel that are seconds (or seconds per token); all must be finite and ≥ 0.
COST_FIELDS = ("edge_prefill_a", "edge_prefill_b", "edge_step_a", "edge_step_c", "gate_s", "cloud_prefill_a",
               "cloud_prefill_b", "verify_a", "verify_b", "verify_c", "cloud_step_a", "cloud_step_c")

#: Fitted phases, in the order people read them, with the flag of `sectrace simulate` that replaces each.
PHASE_FLAGS = {"edge_prefill": "--edge-prefill", "edge_decode": "--edge-tps", "cloud_prefill": "--cloud-prefill",
               "cloud_verify": "--cloud-verify", "cloud_decode": "--cloud-tps"}

#: Above this mean absolute error (as a fraction of the measured time) a phase's fit is flagged as unreliable:
#: a quarter off on average means the linear cost model does not describe the timings the trace measured.
FIT_ERROR_WARN = 0.25


@dataclass(frozen=True)
class CostModel:
    """Seconds per model call. Edge: prefill = a + b·prompt tokens; decode step = a + c·context.
    Cloud: prefill likewise; verify of n tokens = a + b·n + c·context; decode step = a + c·context.

    Every coefficient is a time, so every one is finite and ≥ 0: a negative slope would make long
    contexts take negative seconds, and a results table would carry negative parts.
    ``fit_error`` (phase → mean absolute error as a fraction of the measured time) and ``fit_rows``
    (phase → timings used) are set by :func:`fit_costs`; None for costs that were not fitted.
    """

    edge_prefill_a: float = 7.3
    edge_prefill_b: float = 0.0
    edge_step_a: float = 1 / 2.10
    edge_step_c: float = 0.0
    gate_s: float = 0.0
    cloud_prefill_a: float = 0.35
    cloud_prefill_b: float = 0.0
    verify_a: float = 1 / 24.16
    verify_b: float = 0.004
    verify_c: float = 0.0
    cloud_step_a: float = 1 / 24.16
    cloud_step_c: float = 0.0
    source: str = "defaults (the study's devices)"
    fit_error: dict | None = None
    fit_rows: dict | None = None

    def __post_init__(self):
        # Overrides from flags, device presets and speed-ups all come through dataclasses.replace, which runs this.
        for name in COST_FIELDS:
            value = getattr(self, name)
            try:
                ok = math.isfinite(value) and value >= 0
            except TypeError:
                ok = False
            if not ok:
                raise UserError(f"cost {name} = {value!r} must be a finite number of seconds ≥ 0 "
                                "(check the speeds, times and speed-ups given)")

    def scaled(self, edge_speedup: float = 1.0, cloud_speedup: float = 1.0) -> CostModel:
        if not (edge_speedup > 0 and cloud_speedup > 0):
            raise UserError(f"speed-ups must be positive (got edge {edge_speedup:g}, cloud {cloud_speedup:g})")
        e, c = 1.0 / edge_speedup, 1.0 / cloud_speedup
        return replace(self, edge_prefill_a=self.edge_prefill_a * e, edge_prefill_b=self.edge_prefill_b * e,
                       edge_step_a=self.edge_step_a * e, edge_step_c=self.edge_step_c * e,
                       cloud_prefill_a=self.cloud_prefill_a * c, cloud_prefill_b=self.cloud_prefill_b * c,
                       verify_a=self.verify_a * c, verify_b=self.verify_b * c, verify_c=self.verify_c * c,
                       cloud_step_a=self.cloud_step_a * c, cloud_step_c=self.cloud_step_c * c)

    def predict(self, side: str, phase: str, new_tokens, context_tokens):
        """Seconds this model gives one measured call (what the timings table records), for fit checks."""
        n, ctx = np.asarray(new_tokens, float), np.asarray(context_tokens, float)
        if (side, phase) == ("edge", "prefill"):
            return self.edge_prefill_a + self.edge_prefill_b * n
        if (side, phase) == ("edge", "decode"):
            return self.edge_step_a + self.edge_step_c * ctx
        if (side, phase) == ("cloud", "prefill"):
            return self.cloud_prefill_a + self.cloud_prefill_b * n
        if (side, phase) == ("cloud", "verify"):
            return self.verify_a + self.verify_b * n + self.verify_c * ctx
        if (side, phase) == ("cloud", "decode"):
            return self.cloud_step_a + self.cloud_step_c * ctx
        raise UserError(f"unknown timing phase {side} {phase}; timings have edge/cloud prefill, decode, verify")


def _identifiable(X: np.ndarray, cols: list[str]) -> list[int]:
    """Regressors (column indices after the intercept) the data can tell apart: each must add rank.

    A constant column is the intercept again and two proportional ones cannot be split, so such a
    slope would be arbitrary; it is left out (coefficient 0), as the intercept or the kept slope absorbs it.
    """
    keep: list[int] = []
    scale = np.maximum(np.abs(X).max(axis=0), 1e-300)
    Xs = X / scale
    rank = np.linalg.matrix_rank(Xs[:, :1])
    for j in range(1, X.shape[1]):
        r = np.linalg.matrix_rank(Xs[:, [0] + [k + 1 for k in keep] + [j]])
        if r > rank:
            keep.append(j - 1)
            rank = r
    return keep


def _fit(rows: pl.DataFrame, xcols: list[str]):
    """Non-negative least squares with an intercept: returns (intercept, {regressor: slope}, mean abs. % error).

    Every coefficient is a time, so the fit is constrained to ≥ 0 (scipy's NNLS, an exact active-set
    method): on noisy timings unconstrained least squares can trade a large intercept against a negative
    slope, and then long contexts cost negative seconds. Regressors the data cannot identify are left at 0.
    """
    from scipy.optimize import nnls

    y = rows["seconds"].to_numpy().astype(float)
    if not np.all(np.isfinite(y)) or np.any(y < 0):
        raise UserError("the trace's timings hold a negative or non-finite duration; re-collect the timing probes")
    X_all = np.column_stack([np.ones(len(y))] + [rows[c].to_numpy().astype(float) for c in xcols])
    kept = _identifiable(X_all, xcols)
    X = X_all[:, [0] + [k + 1 for k in kept]]
    scale = np.maximum(np.abs(X).max(axis=0), 1e-300)  # columns of similar size keep NNLS well conditioned
    coef_s, _ = nnls(X / scale, y)
    coef = np.maximum(coef_s / scale, 0.0)
    pred = X @ coef
    mape = float(np.mean(np.abs(pred - y) / np.maximum(y, 1e-12)))
    out = dict.fromkeys(xcols, 0.0)
    out.update((xcols[k], float(c)) for k, c in zip(kept, coef[1:]))
    return float(coef[0]), out, mape


def fit_costs(timings: pl.DataFrame) -> CostModel:
    """Fit a cost model to a trace's measured timings (all coefficients ≥ 0); the fit's mean absolute
    % error and the number of timings are kept per phase."""
    need = {("edge", "prefill"), ("edge", "decode"), ("cloud", "prefill"), ("cloud", "verify")}
    have = {(s, p) for s, p in timings.select("side", "phase").unique().iter_rows()}
    missing = sorted(need - have)
    if missing:
        side, phase = missing[0]
        raise UserError(f"the trace has no {side} {phase} timings to fit; give the cost by flag "
                        "(e.g. --edge-tps, --cloud-verify) or collect timings")
    err, rows = {}, {}

    def sel(side, phase):
        part = timings.filter((pl.col("side") == side) & (pl.col("phase") == phase))
        rows[f"{side}_{phase}"] = part.height
        return part

    ep_a, ep, err["edge_prefill"] = _fit(sel("edge", "prefill"), ["new_tokens"])
    ed_a, ed, err["edge_decode"] = _fit(sel("edge", "decode"), ["context_tokens"])
    cp_a, cp, err["cloud_prefill"] = _fit(sel("cloud", "prefill"), ["new_tokens"])
    v_a, v, err["cloud_verify"] = _fit(sel("cloud", "verify"), ["new_tokens", "context_tokens"])
    if ("cloud", "decode") in have:
        cd_a, cd, err["cloud_decode"] = _fit(sel("cloud", "decode"), ["context_tokens"])
    else:  # a verify of one token is a decode step (sums of non-negative coefficients: non-negative)
        cd_a, cd = v_a + v["new_tokens"], {"context_tokens": v["context_tokens"]}
    return CostModel(edge_prefill_a=ep_a, edge_prefill_b=ep["new_tokens"], edge_step_a=ed_a,
                     edge_step_c=ed["context_tokens"], cloud_prefill_a=cp_a, cloud_prefill_b=cp["new_tokens"],
                     verify_a=v_a, verify_b=v["new_tokens"], verify_c=v["context_tokens"], cloud_step_a=cd_a,
                     cloud_step_c=cd["context_tokens"], source="fitted to the trace's timings", fit_error=err,
                     fit_rows=rows)


def _phase_name(phase: str) -> str:
    return phase.replace("_", " ")


def fit_summary(cost: CostModel, overridden=()) -> str | None:
    """One line for the `simulate` header: each fitted phase's mean absolute error on the trace's own timings
    (with how many timings it rests on), so a reader sees how far to trust each cost. None when not fitted.

    ``overridden``: phases whose cost was replaced (by flag or device preset); their fit no longer prices anything.
    """
    if not cost.fit_error:
        return None
    rows = cost.fit_rows or {}
    parts = []
    for phase in [p for p in PHASE_FLAGS if p in cost.fit_error] + [p for p in cost.fit_error if p not in PHASE_FLAGS]:
        if phase in overridden:
            continue
        n = rows.get(phase)
        count = f" ({n} timing{'s' if n != 1 else ''})" if n is not None else ""
        parts.append(f"{_phase_name(phase)} {100 * cost.fit_error[phase]:.0f}%{count}")
    if not parts:
        return None
    return "fit error (mean absolute, on the trace's own timings): " + ", ".join(parts)


def fit_warning(cost: CostModel, overridden=(), bound: float = FIT_ERROR_WARN) -> str | None:
    """One sentence when a fitted phase is off by more than ``bound`` on average, naming the phase and the fix;
    None when every fit still in use is within it. The caller adds its own "warning: " prefix."""
    bad = [(p, e) for p, e in (cost.fit_error or {}).items() if p not in overridden and e > bound]
    if not bad:
        return None
    names = " and ".join(_phase_name(p) for p, _ in bad)
    errs = " and ".join(f"{100 * e:.0f}%" for _, e in bad)
    flags = ", ".join(PHASE_FLAGS[p] for p, _ in bad if p in PHASE_FLAGS)
    fix = f"give the cost by flag ({flags})" if flags else "give the costs by flag"
    many = len(bad) > 1
    return (f"the fitted {names} cost{'s are' if many else ' is'} off by {errs} on average on the trace's own "
            f"timings (more than {100 * bound:.0f}%), so latencies that depend on {'them' if many else 'it'} "
            f"are rough; collect more timing probes or {fix}")
