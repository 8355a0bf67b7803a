"""Cost models (how long model calls take), as plain data; the network is ``sectrace.network``.

Every cost is linear in what the schedule counts, which is what lets the closed-form engine
price thousands of configurations with one matrix product. Hardware is not always linear: on a
CPU a verify pass of 4 tokens can take less time than one of 3 (the kernels tile the block
differently). So each phase is fitted two ways, a linear model and a table measured over the
shapes that matter, and the one that predicts held-out timings better (cross-validated) is
kept. A verify table stays linear in the schedule: the schedule counts verify calls per block
size (``verify_calls_n1`` … ``verify_calls_n16``) and each count is priced at its table entry.
"""

from __future__ import annotations

import hashlib
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
#: a quarter off on average means the cost model does not describe the timings the trace measured.
FIT_ERROR_WARN = 0.25

#: Verify calls are priced per block size up to this many tokens (schedule features verify_calls_n1..n16;
#: the last counts every call of 16 tokens or more). A longer call costs the 16-token entry plus the
#: per-token slope ``verify_b`` for each token beyond it.
VERIFY_TABLE_MAX = 16

#: Cross-validation folds: timings are grouped by shape (block size and context), and whole shapes are
#: held out, so a model is scored on shapes it did not see (repeats of one shape, run back to back, share
#: the machine's momentary load and would flatter a model that memorises them).
CV_FOLDS = 10

#: A table must also lower the cross-validated error by this much (absolute): below half a per cent, two
#: models that both predict held-out timings (near) perfectly differ only by rounding.
CV_MIN_GAIN = 0.005

#: What ``source`` says while the verify cost is a table (removed when a preset or flag replaces it).
TABLE_NOTE = "; cloud verify priced per block size"

@dataclass(frozen=True)
class CostModel:
    """Seconds per model call. Edge: prefill = a + b·prompt tokens; decode step = a + c·context.
    Cloud: prefill likewise; decode step = a + c·context; verify of n tokens = a + b·n + c·context
    (linear), or, with ``verify_table``, table[n] + b·(n − 16 if n > 16 else 0) + c·context, where
    table[n] is the measured time of an n-token call at context 0 (n = 1 … 16).

    Every coefficient is a time, so every one is finite and ≥ 0: a negative slope would make long
    contexts take negative seconds, and a results table would carry negative parts. With a table,
    b·n ≤ table[n] for every n: the breakdown books b per resynced token out of a call's verify time,
    which must stay ≥ 0.
    ``fit_error`` (phase → mean absolute error of the model in use, as a fraction of the measured time),
    ``fit_rows`` (phase → timings used) and ``fit_choice`` (phase → the models compared, their
    cross-validated errors and the one chosen; see :func:`fit_costs`) are set by :func:`fit_costs`;
    None for costs that were not fitted.
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
    verify_table: tuple | None = None
    fit_choice: dict | None = None

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
        if self.verify_table is not None:
            try:
                table = tuple(float(v) for v in self.verify_table)
            except (TypeError, ValueError):
                table = ()
            if len(table) != VERIFY_TABLE_MAX or not all(math.isfinite(v) and v >= 0 for v in table):
                raise UserError(f"verify_table must list {VERIFY_TABLE_MAX} finite times ≥ 0 (seconds of a verify "
                                f"call of 1 … {VERIFY_TABLE_MAX} tokens)")
            worst = min(v / n for n, v in enumerate(table, 1))
            if self.verify_b > worst * (1 + 1e-9) + 1e-15:
                raise UserError(f"verify_b = {self.verify_b:g} s/token exceeds the verify table's smallest time "
                                f"per token ({worst:g} s); a call's parts would go negative")
            object.__setattr__(self, "verify_table", table)

    def scaled(self, edge_speedup: float = 1.0, cloud_speedup: float = 1.0) -> CostModel:
        if not (edge_speedup > 0 and cloud_speedup > 0):
            raise UserError(f"speed-ups must be positive (got edge {edge_speedup:g}, cloud {cloud_speedup:g})")
        e, c = 1.0 / edge_speedup, 1.0 / cloud_speedup
        table = None if self.verify_table is None else tuple(v * c for v in self.verify_table)
        return replace(self, edge_prefill_a=self.edge_prefill_a * e, edge_prefill_b=self.edge_prefill_b * e,
                       edge_step_a=self.edge_step_a * e, edge_step_c=self.edge_step_c * e,
                       cloud_prefill_a=self.cloud_prefill_a * c, cloud_prefill_b=self.cloud_prefill_b * c,
                       verify_a=self.verify_a * c, verify_b=self.verify_b * c, verify_c=self.verify_c * c,
                       cloud_step_a=self.cloud_step_a * c, cloud_step_c=self.cloud_step_c * c, verify_table=table)

    def with_linear_verify(self, a: float, b: float, c: float, source: str | None = None) -> CostModel:
        """The verify cost replaced by a + b·n + c·context (a device preset or a flag): any measured table goes."""
        src = self.source.replace(TABLE_NOTE, "") if source is None else source
        return replace(self, verify_a=a, verify_b=b, verify_c=c, verify_table=None, source=src)

    def verify_block_s(self, new_tokens):
        """Seconds of one verify call of ``new_tokens`` tokens at context 0 (the table or a + b·n)."""
        n = np.asarray(new_tokens, float)
        if self.verify_table is None:
            return self.verify_a + self.verify_b * n
        table = np.asarray(self.verify_table)
        top = VERIFY_TABLE_MAX
        idx = np.clip(n, 1, top).astype(int) - 1
        return table[idx] + self.verify_b * np.maximum(n - top, 0.0)

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
            return self.verify_block_s(n) + self.verify_c * ctx
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


def _lad(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Coefficients β ≥ 0 minimising Σ |Xβ − y| / y, the mean absolute relative error: the number reported.

    Why not least squares: timings on a shared machine have a heavy right tail (another process takes a
    core for a while and a run of probes comes out 2–3× slower; the bundled trace has such runs). Squared
    error lets those few bend the fit; absolute relative error fits the typical timing, and a model is
    fitted by the same measure it is scored by. Every coefficient is a time, hence β ≥ 0. Solved exactly as a
    linear program (scipy's HiGHS): Xβ + r⁺ − r⁻ = y with β, r⁺, r⁻ ≥ 0, minimising Σ (r⁺ + r⁻) / y.
    """
    from scipy import sparse
    from scipy.optimize import linprog

    m, p = X.shape
    scale = np.maximum(np.abs(X).max(axis=0), 1e-300)  # columns of similar size keep the program well conditioned
    w = 1.0 / np.maximum(y, 1e-12)
    eye = sparse.identity(m, format="csr")
    A = sparse.hstack([sparse.csr_matrix(X / scale), eye, -eye], format="csc")
    res = linprog(np.r_[np.zeros(p), w, w], A_eq=A, b_eq=y, bounds=(0, None), method="highs")
    if res.status != 0:  # pragma: no cover - a feasible, bounded program; HiGHS only fails on numerical trouble
        raise UserError(f"fitting the timing costs failed ({res.message}); re-collect the timing probes")
    return np.maximum(res.x[:p] / scale, 0.0)


def _mape(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - y) / np.maximum(y, 1e-12)))


def _linear(cols: dict[str, np.ndarray], y: np.ndarray) -> tuple[float, dict[str, float]]:
    """The linear model: intercept + a slope per regressor, all ≥ 0; slopes the data cannot identify are 0."""
    names = list(cols)
    X_all = np.column_stack([np.ones(len(y))] + [cols[c] for c in names])
    kept = _identifiable(X_all, names)
    coef = _lad(X_all[:, [0] + [k + 1 for k in kept]], y)
    out = dict.fromkeys(names, 0.0)
    out.update((names[k], float(c)) for k, c in zip(kept, coef[1:]))
    return float(coef[0]), out


def _linear_predict(fit, cols: dict[str, np.ndarray]) -> np.ndarray:
    a, slopes = fit
    return a + sum(slopes[c] * cols[c] for c in slopes)


def _table(x: np.ndarray, y: np.ndarray, ctx: np.ndarray | None = None):
    """The table model: one time per measured shape ``x`` (block size, context or prompt length), plus a
    shared context slope ≥ 0 where ``ctx`` is given and the data can identify it. Returns (shapes, times, slope)."""
    xs = np.unique(x)
    X = (x[:, None] == xs[None, :]).astype(float)
    if ctx is not None:
        with_ctx = np.column_stack([X, ctx])
        if np.linalg.matrix_rank(with_ctx / np.maximum(np.abs(with_ctx).max(axis=0), 1e-300)) > len(xs):
            coef = _lad(with_ctx, y)
            return xs, coef[:-1], float(coef[-1])
    return xs, _lad(X, y), 0.0


def _interp(xs: np.ndarray, vals: np.ndarray, q, above: float | None = None) -> np.ndarray:
    """A table read at ``q``: linear between measured shapes, flat below the first; above the last flat, or
    rising by ``above`` per unit (a verify call longer than any probed: the per-token slope)."""
    q = np.asarray(q, float)
    out = np.interp(q, xs, vals)
    if above is not None:
        out = out + above * np.maximum(q - xs[-1], 0.0)
    return out


def _verify_table(xs, vals, b: float) -> tuple[tuple, float]:
    """The 16-entry verify table from measured block sizes, and the per-token slope capped so that b·n never
    exceeds a call's time (b is what the breakdown books per resynced token; see CostModel)."""
    b = min(b, float(np.min(vals / xs)) if np.all(xs > 0) else b)
    table = _interp(xs, vals, np.arange(1, VERIFY_TABLE_MAX + 1), above=b)
    return tuple(float(v) for v in table), b


def _cv(keys: np.ndarray, y: np.ndarray, predict) -> dict | None:
    """Cross-validated mean absolute relative error of ``predict(train_mask, test_mask)``, holding out whole
    shapes (rows of ``keys``): CV_FOLDS folds, shapes dealt round-robin in sorted order, or one shape per fold
    when there are fewer. None with a single shape (nothing to hold out). Also the error's standard error."""
    _, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = np.asarray(inv).ravel()
    shapes = int(inv.max()) + 1 if len(inv) else 0
    if shapes < 2:
        return None
    k = min(CV_FOLDS, shapes)
    fold = inv % k
    err = np.empty(len(y))
    for f in range(k):
        te = fold == f
        err[te] = np.abs(predict(~te, te) - y[te]) / np.maximum(y[te], 1e-12)
    se = float(np.std(err, ddof=1) / math.sqrt(len(err))) if len(err) > 1 else float("inf")
    return {"error": float(err.mean()), "se": se, "folds": k, "shapes": shapes}


def _fit_phase(rows: pl.DataFrame, xcols: list[str], table_by: str, priced: bool):
    """One phase fitted both ways and scored by cross-validation; returns (linear fit, table fit or None,
    the choice record, the model in use's in-sample error).

    The table is chosen only where it can be priced (verify calls: per block size) and where it beats the
    linear model by more than one standard error of its CV error (the one-standard-error rule: the simpler
    model unless the data clearly say otherwise) and by at least CV_MIN_GAIN. Decode steps and prefills are
    priced linearly in context and prompt length (per-context features would be needed for a table there);
    their table is scored all the same, and the summary says when it would have fitted better."""
    y = rows["seconds"].to_numpy().astype(float)
    if not np.all(np.isfinite(y)) or np.any(y < 0):
        raise UserError("the trace's timings hold a negative or non-finite duration; re-collect the timing probes")
    n = rows["new_tokens"].to_numpy().astype(float)
    ctx = rows["context_tokens"].to_numpy().astype(float)
    allc = {"new_tokens": n, "context_tokens": ctx}
    cols = {c: allc[c] for c in xcols}
    verify = table_by == "block size"
    x = {"block size": n, "context": ctx, "prompt length": n}[table_by]
    keys = np.column_stack([n, ctx])

    def fit_table(mask):
        xs, vals, c = _table(x[mask], y[mask], ctx[mask] if verify else None)
        if not verify:
            return xs, vals, c, None
        b = _linear({k: v[mask] for k, v in cols.items()}, y[mask])[1]["new_tokens"]
        return xs, vals, c, _verify_table(xs, vals, b)[1]

    def table_predict(fit, sel):
        xs, vals, c, b = fit
        return _interp(xs, vals, x[sel], above=b) + c * ctx[sel]

    lin = _linear(cols, y)
    tab = fit_table(np.ones(len(y), bool))
    cv_lin = _cv(keys, y, lambda tr, te: _linear_predict(_linear({k: v[tr] for k, v in cols.items()}, y[tr]),
                                                         {k: v[te] for k, v in cols.items()}))
    cv_tab = _cv(keys, y, lambda tr, te: table_predict(fit_table(tr), te))
    better = (cv_lin is not None and cv_tab is not None and cv_tab["error"] + cv_tab["se"] < cv_lin["error"]
              and cv_tab["error"] < cv_lin["error"] - CV_MIN_GAIN)
    use_table = priced and better
    in_sample = _mape(table_predict(tab, slice(None)) if use_table else _linear_predict(lin, cols), y)
    choice = {"model": "table" if use_table else "linear", "table_by": table_by, "table_priced": priced,
              "table_fits_better": better,
              "cv_linear": cv_lin and cv_lin["error"], "cv_table": cv_tab and cv_tab["error"],
              "se_linear": cv_lin and cv_lin["se"], "se_table": cv_tab and cv_tab["se"],
              "folds": cv_lin["folds"] if cv_lin else 0, "shapes": cv_lin["shapes"] if cv_lin else 1,
              "error_linear": _mape(_linear_predict(lin, cols), y),
              "error_table": _mape(table_predict(tab, slice(None)), y)}
    return lin, (tab if use_table else None), choice, in_sample


_FIT_CACHE: dict[str, CostModel] = {}


def fit_costs(timings: pl.DataFrame) -> CostModel:
    """Fit a cost model to a trace's measured timings (all coefficients ≥ 0). Per phase, a linear model and a
    table over the shape that matters are compared by cross-validation (see :func:`_fit_phase`); the choice,
    both models' errors and the number of timings are kept on the model. Cached on the timings' content: a
    sweep or a test suite fits one trace many times."""
    need = {("edge", "prefill"), ("edge", "decode"), ("cloud", "prefill"), ("cloud", "verify")}
    have = {(s, p) for s, p in timings.select("side", "phase").unique().iter_rows()}
    missing = sorted(need - have)
    if missing:
        side, phase = missing[0]
        raise UserError(f"the trace has no {side} {phase} timings to fit; give the cost by flag "
                        "(e.g. --edge-tps, --cloud-verify) or collect timings")
    cols = timings.select("side", "phase", "new_tokens", "context_tokens", "seconds")
    key = hashlib.sha256(b"".join(cols[c].to_numpy().tobytes() if cols[c].dtype != pl.String
                                  else "\0".join(cols[c].to_list()).encode() for c in cols.columns)).hexdigest()
    hit = _FIT_CACHE.get(key)
    if hit is None:
        hit = _fit_costs(cols, have)
        if len(_FIT_CACHE) >= 64:
            _FIT_CACHE.pop(next(iter(_FIT_CACHE)))
        _FIT_CACHE[key] = hit
    return replace(hit, fit_error=dict(hit.fit_error), fit_rows=dict(hit.fit_rows),
                   fit_choice={p: dict(c) for p, c in hit.fit_choice.items()})


def _fit_costs(timings: pl.DataFrame, have: set) -> CostModel:
    err, rows, choice = {}, {}, {}

    def fit(side, phase, xcols, table_by, priced=False):
        part = timings.filter((pl.col("side") == side) & (pl.col("phase") == phase))
        name = f"{side}_{phase}"
        rows[name] = part.height
        lin, tab, choice[name], err[name] = _fit_phase(part, xcols, table_by, priced)
        return lin, tab

    (ep_a, ep), _ = fit("edge", "prefill", ["new_tokens"], "prompt length")
    (ed_a, ed), _ = fit("edge", "decode", ["context_tokens"], "context")
    (cp_a, cp), _ = fit("cloud", "prefill", ["new_tokens"], "prompt length")
    (v_a, v), vtab = fit("cloud", "verify", ["new_tokens", "context_tokens"], "block size", priced=True)
    verify = {"verify_a": v_a, "verify_b": v["new_tokens"], "verify_c": v["context_tokens"], "verify_table": None}
    source = "fitted to the trace's timings"
    if vtab is not None:
        xs, vals, c, b = vtab
        table, b = _verify_table(xs, vals, b)
        verify = {"verify_a": 0.0, "verify_b": b, "verify_c": c, "verify_table": table}
        choice["cloud_verify"]["table"] = list(table)
        source += TABLE_NOTE
    if ("cloud", "decode") in have:
        (cd_a, cd), _ = fit("cloud", "decode", ["context_tokens"], "context")
        cd_c = cd["context_tokens"]
    else:  # a verify of one token is a decode step (non-negative times: non-negative)
        one = CostModel(**verify)
        cd_a, cd_c = float(one.verify_block_s(1)), verify["verify_c"]
    return CostModel(edge_prefill_a=ep_a, edge_prefill_b=ep["new_tokens"], edge_step_a=ed_a,
                     edge_step_c=ed["context_tokens"], cloud_prefill_a=cp_a, cloud_prefill_b=cp["new_tokens"],
                     cloud_step_a=cd_a, cloud_step_c=cd_c, source=source, fit_error=err, fit_rows=rows,
                     fit_choice=choice, **verify)


def _phase_name(phase: str) -> str:
    return phase.replace("_", " ")


def _pct(x) -> str:
    return f"{100 * x:.0f}%"


def fit_summary(cost: CostModel, overridden=()) -> str | None:
    """One line for the `simulate` header: per fitted phase, the model in use, its mean absolute error on the
    trace's own timings and cross-validated on held-out shapes, and how many timings it rests on, so a reader
    sees how far to trust each cost. Where the other model was scored too, its errors follow. None when not fitted.

    ``overridden``: phases whose cost was replaced (by flag or device preset); their fit no longer prices anything.
    """
    if not cost.fit_error:
        return None
    rows = cost.fit_rows or {}
    choices = cost.fit_choice or {}
    parts = []
    for phase in [p for p in PHASE_FLAGS if p in cost.fit_error] + [p for p in cost.fit_error if p not in PHASE_FLAGS]:
        if phase in overridden:
            continue
        ch = choices.get(phase)
        n = rows.get(phase)
        count = f"{n} timing{'s' if n != 1 else ''}" if n is not None else ""
        text = f"{_phase_name(phase)} {_pct(cost.fit_error[phase])}"
        notes = []
        if ch:
            mine, other = ch["model"], "linear" if ch["model"] == "table" else "table"
            if ch[f"cv_{mine}"] is not None:
                text += f", CV {_pct(ch[f'cv_{mine}'])}"
            notes.append("linear" if mine == "linear" else f"table by {ch['table_by']}")
            if ch[f"cv_{other}"] is not None and (mine == "table" or ch["table_fits_better"]):
                what = "linear" if other == "linear" else f"a table by {ch['table_by']}"
                unpriced = "" if other == "linear" or ch["table_priced"] else ", not priced"
                notes.append(f"{what} {_pct(ch[f'error_{other}'])}, CV {_pct(ch[f'cv_{other}'])}{unpriced}")
            if ch[f"cv_{mine}"] is None and count:
                count += ", no CV"
        parts.append(text + " (" + "; ".join(notes + ([count] if count else [])) + ")")
    if not parts:
        return None
    return ("fit error (mean absolute on the trace's own timings, then cross-validated (CV) on held-out shapes): "
            + ", ".join(parts))


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

def verify_table_text(table, scale: float = 1.0) -> str | None:
    """A verify table (seconds per block size) as one text column, so results stay flat (CSV, DuckDB)."""
    return None if table is None else " ".join(repr(float(v) * scale) for v in table)
