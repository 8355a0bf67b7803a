"""Cost models (how long model calls take), as plain data; the network is ``sectrace.network``.

Every cost is linear in what the schedule counts, which is what lets the closed-form engine
price thousands of configurations with one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from ..errors import UserError


@dataclass(frozen=True)
class CostModel:
    """Seconds per model call. Edge: prefill = a + b·prompt tokens; decode step = a + c·context.
    Cloud: prefill likewise; verify of n tokens = a + b·n + c·context; decode step = a + c·context."""

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

    def scaled(self, edge_speedup: float = 1.0, cloud_speedup: float = 1.0) -> "CostModel":
        e, c = 1.0 / edge_speedup, 1.0 / cloud_speedup
        return replace(self, edge_prefill_a=self.edge_prefill_a * e, edge_prefill_b=self.edge_prefill_b * e,
                       edge_step_a=self.edge_step_a * e, edge_step_c=self.edge_step_c * e,
                       cloud_prefill_a=self.cloud_prefill_a * c, cloud_prefill_b=self.cloud_prefill_b * c,
                       verify_a=self.verify_a * c, verify_b=self.verify_b * c, verify_c=self.verify_c * c,
                       cloud_step_a=self.cloud_step_a * c, cloud_step_c=self.cloud_step_c * c)


def _fit(rows: pl.DataFrame, xcols: list[str]):
    """Least squares with an intercept; drops regressors the data cannot identify. Returns coefs, rel. error."""
    y = rows["seconds"].to_numpy()
    cols = [c for c in xcols if rows[c].n_unique() > 1]
    X = np.column_stack([np.ones(len(y))] + [rows[c].to_numpy().astype(float) for c in cols])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    pred = X @ coef
    mape = float(np.mean(np.abs(pred - y) / np.maximum(y, 1e-12)))
    out = dict.fromkeys(xcols, 0.0)
    out.update(zip(cols, coef[1:]))
    return float(coef[0]), out, mape


def fit_costs(timings: pl.DataFrame) -> CostModel:
    """Fit a cost model to a trace's measured timings; the fit's mean absolute % error is kept per phase."""
    need = {("edge", "prefill"), ("edge", "decode"), ("cloud", "prefill"), ("cloud", "verify")}
    have = {(s, p) for s, p in timings.select("side", "phase").unique().iter_rows()}
    missing = sorted(need - have)
    if missing:
        side, phase = missing[0]
        raise UserError(f"the trace has no {side} {phase} timings to fit; give the cost by flag "
                        "(e.g. --edge-tps, --cloud-verify) or collect timings")
    err = {}

    def sel(side, phase):
        return timings.filter((pl.col("side") == side) & (pl.col("phase") == phase))

    ep_a, ep, err["edge_prefill"] = _fit(sel("edge", "prefill"), ["new_tokens"])
    ed_a, ed, err["edge_decode"] = _fit(sel("edge", "decode"), ["context_tokens"])
    cp_a, cp, err["cloud_prefill"] = _fit(sel("cloud", "prefill"), ["new_tokens"])
    v_a, v, err["cloud_verify"] = _fit(sel("cloud", "verify"), ["new_tokens", "context_tokens"])
    if ("cloud", "decode") in have:
        cd_a, cd, err["cloud_decode"] = _fit(sel("cloud", "decode"), ["context_tokens"])
    else:  # a verify of one token is a decode step
        cd_a, cd = v_a + v["new_tokens"], {"context_tokens": v["context_tokens"]}
    return CostModel(edge_prefill_a=ep_a, edge_prefill_b=ep["new_tokens"], edge_step_a=ed_a,
                     edge_step_c=ed["context_tokens"], cloud_prefill_a=cp_a, cloud_prefill_b=cp["new_tokens"],
                     verify_a=v_a, verify_b=v["new_tokens"], verify_c=v["context_tokens"], cloud_step_a=cd_a,
                     cloud_step_c=cd["context_tokens"], source="fitted to the trace's timings", fit_error=err)
