"""Physical invariants of fitted costs and of the times they price, on the bundled real trace and on synthetic timings.

Every cost coefficient is a time, so a fit must never go negative; every part of a simulated run is a time,
so none may be negative, all must be finite, and they must add up to the latency.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from sectrace.cli import main
from sectrace.errors import UserError
from sectrace.gates import parse_gate
from sectrace.protocol import Accept, Policy
from sectrace.simulate import CostModel, Network, Replayer, baselines, fit_costs, simulate
from sectrace.simulate.costs import COST_FIELDS, FIT_ERROR_WARN, PHASE_FLAGS, fit_summary, fit_warning
from sectrace.trace import load_trace, sample_trace_path

PHASES = {"edge_prefill": ("edge", "prefill"), "edge_decode": ("edge", "decode"),
          "cloud_prefill": ("cloud", "prefill"), "cloud_verify": ("cloud", "verify"),
          "cloud_decode": ("cloud", "decode")}


@pytest.fixture(scope="module")
def real():
    return load_trace(sample_trace_path())


@pytest.fixture(scope="module")
def fitted(real):
    return fit_costs(real.timings)


def _rows(timings, phase):
    side, ph = PHASES[phase]
    return timings.filter((pl.col("side") == side) & (pl.col("phase") == ph))


def _by_hand(cost: CostModel, phase: str, n: np.ndarray, ctx: np.ndarray) -> np.ndarray:
    """The model's seconds for one measured call, written out from the CostModel docstring (not cost.predict)."""
    if cost.verify_table is None:
        verify = cost.verify_a + cost.verify_b * n + cost.verify_c * ctx
    else:  # table[n] for n ≤ 16; the 16-token entry plus b per extra token beyond
        verify = np.array([cost.verify_table[min(int(m), 16) - 1] + cost.verify_b * max(m - 16, 0) for m in n])
        verify = verify + cost.verify_c * ctx
    return {"edge_prefill": cost.edge_prefill_a + cost.edge_prefill_b * n,
            "edge_decode": cost.edge_step_a + cost.edge_step_c * ctx,
            "cloud_prefill": cost.cloud_prefill_a + cost.cloud_prefill_b * n,
            "cloud_verify": verify,
            "cloud_decode": cost.cloud_step_a + cost.cloud_step_c * ctx}[phase]


def _rel_error(coef, X, y):
    return float(np.mean(np.abs(X @ coef - y) / y))


def _lad_by_lp(X: np.ndarray, y: np.ndarray, lower=0.0) -> np.ndarray:
    """min mean |Xβ − y| / y over β ≥ ``lower``, written independently of costs._lad: the inequality form
    (−u ≤ Xβ − y ≤ u), dense, solved by the dual simplex rather than the default HiGHS choice."""
    from scipy.optimize import linprog

    m, p = X.shape
    A = np.block([[X, -np.eye(m)], [-X, -np.eye(m)]])
    res = linprog(np.r_[np.zeros(p), 1 / y], A_ub=A, b_ub=np.r_[y, -y],
                  bounds=[(lower, None)] * p + [(0, None)] * m, method="highs-ds")
    assert res.status == 0
    return res.x[:p]


# --- the fit on the bundled real trace -----------------------------------------------------------------------


def test_real_fit_has_no_negative_coefficient(fitted):
    for name in COST_FIELDS:
        value = getattr(fitted, name)
        assert type(value) is float and math.isfinite(value) and value >= 0, (name, value)
    # the verify pass clearly costs more for more tokens (the timings rise from ~0.4 s at 1 token to ~1-3 s at 16)
    assert fitted.verify_b > 0.01


def test_real_fit_error_is_what_the_model_predicts(real, fitted):
    """The stated per-phase error is the model's mean absolute % error on the trace's own timings,
    and the warning names exactly the phases above the bound."""
    assert set(fitted.fit_error) == set(PHASES)  # the sample has cloud decode timings too
    for phase, (side, ph) in PHASES.items():
        rows = _rows(real.timings, phase)
        y = rows["seconds"].to_numpy()
        pred = _by_hand(fitted, phase, rows["new_tokens"].to_numpy().astype(float), rows["context_tokens"].to_numpy().astype(float))
        assert np.all(pred >= 0)
        mape = float(np.mean(np.abs(pred - y) / y))
        assert fitted.fit_error[phase] == pytest.approx(mape, rel=1e-9, abs=1e-12)
        assert fitted.fit_rows[phase] == rows.height
        assert np.allclose(fitted.predict(side, ph, rows["new_tokens"], rows["context_tokens"]), pred)
    bad = {p for p, e in fitted.fit_error.items() if e > FIT_ERROR_WARN}
    msg = fit_warning(fitted)
    assert (msg is None) == (not bad)
    for p in PHASES:
        assert (p.replace("_", " ") in msg) == (p in bad) if msg else True
    for p in bad:
        assert PHASE_FLAGS[p] in msg
    # phases replaced by flag no longer warn
    assert fit_warning(fitted, overridden=bad) is None


def test_real_fit_is_the_best_non_negative_fit(real, fitted):
    """Both verify models are the best non-negative fits by the measure they are scored by (mean absolute
    relative error): the linear one against an independent linear program and a local search around it; and on
    this trace the unconstrained fit would have gone negative (why the constraint matters)."""
    rows = _rows(real.timings, "cloud_verify")
    y = rows["seconds"].to_numpy()
    n, ctx = rows["new_tokens"].to_numpy().astype(float), rows["context_tokens"].to_numpy().astype(float)
    X = np.column_stack([np.ones(len(y)), n, ctx])
    best = _lad_by_lp(X, y)
    ch = fitted.fit_choice["cloud_verify"]
    assert ch["error_linear"] == pytest.approx(_rel_error(best, X, y), rel=1e-6)
    for j, step in itertools.product(range(3), (1e-3, -1e-3)):  # no neighbour (within the bounds) does better
        nb = best.copy()
        nb[j] = max(nb[j] + step * max(abs(nb[j]), 1e-4), 0.0)
        assert _rel_error(nb, X, y) >= ch["error_linear"] - 1e-9
    # the table by block size: one time per size plus a context slope ≥ 0, the same measure
    sizes = np.unique(n)
    T = np.column_stack([(n == s).astype(float) for s in sizes] + [ctx])
    tab = _lad_by_lp(T, y)
    assert ch["error_table"] == pytest.approx(_rel_error(tab, T, y), rel=1e-6)
    assert fitted.fit_error["cloud_verify"] == pytest.approx(ch["error_table"], rel=1e-12)
    # unconstrained, the context slope goes negative on this trace
    free = _lad_by_lp(X, y, lower=None)
    assert free[2] < 0


def test_fit_summary_names_every_phase(fitted):
    line = fit_summary(fitted)
    for phase in PHASES:
        assert f"{phase.replace('_', ' ')} {100 * fitted.fit_error[phase]:.0f}%" in line
    assert "1 timing, no CV" in line  # the sample's prefills rest on one probe each: 0 % error says little
    assert "cloud verify" not in fit_summary(fitted, overridden={"cloud_verify"})
    assert fit_summary(CostModel()) is None and fit_warning(CostModel()) is None


# --- simulating the real trace with the fitted costs -------------------------------------------------------


def _policies(max_new):
    pols = list(baselines(max_new))
    for k, gate, accept, privacy, cache in itertools.product(
            (3, 5), ("always", "entropy:2.5", "margin:0.3"), ("top1", "rank:20"), ("features", "token-only"),
            ("stateful", "stateless")):
        pols.append(Policy(k=k, gate=parse_gate(gate), gate_spec=gate, accept=Accept.parse(accept), privacy=privacy,
                           cloud_cache=cache, max_new_tokens=max_new))
    return pols


@pytest.fixture(scope="module")
def results(real, fitted):
    max_new = int(real.manifest["decoding"].get("max_new_tokens", 64))
    nets = [Network(rtt_s=0.0), Network(rtt_s=0.05), Network(rtt_s=0.3, up_Bps=1e6 / 8, down_Bps=5e6 / 8,
                                                               overhead_bytes=300)]
    configs = [(fitted, n) for n in nets]
    return simulate(real, _policies(max_new), configs, replayer=Replayer(real))


def test_simulated_times_are_physical(results):
    parts = [c for c in results.columns if c.startswith("t_") and c.endswith("_s")]
    assert {"t_cloud_verify_s", "t_resync_s", "t_edge_drafting_s", "t_wasted_drafts_s"} <= set(parts)
    cov = results.filter(pl.col("covered"))
    # enough covered rows to mean something: every policy has some, and the hybrids escalate
    assert cov["policy"].n_unique() == results["policy"].n_unique()
    assert cov.filter(pl.col("k") > 0)["t_cloud_verify_s"].sum() > 0
    assert cov.filter(pl.col("cloud_cache") == "stateless")["t_resync_s"].sum() > 0
    for c in parts + ["latency_s", "ttft_s"]:
        v = cov[c].to_numpy()
        assert np.all(np.isfinite(v)), c
        assert v.min() >= 0, (c, v.min())
    lat = cov["latency_s"].to_numpy()
    total = np.sum([cov[c].to_numpy() for c in parts], axis=0)
    assert np.all(np.abs(total - lat) <= 1e-9 * lat)
    assert np.all(lat > 0)
    assert np.all(cov["ttft_s"].to_numpy() <= lat)


def test_fitted_costs_are_physical_with_presets_and_speedups(fitted):
    from sectrace.simulate import profiles

    for cost in (profiles.cloud_device("study-a100").apply(fitted), fitted.scaled(4.0, 0.5),
                 profiles.edge_device("study-cpu-2core").apply(fitted)):
        assert all(getattr(cost, f) >= 0 and math.isfinite(getattr(cost, f)) for f in COST_FIELDS)


# --- fits on synthetic timings with known coefficients --------------------------------------------------------


def _timings(rows):
    return pl.DataFrame(rows, schema={"side": pl.String, "phase": pl.String, "new_tokens": pl.Int32,
                                      "context_tokens": pl.Int32, "seconds": pl.Float64, "device": pl.String,
                                      "threads": pl.Int32}, orient="row")


def _table(verify, noise=0.0, seed=0, decode=True):
    """Timings from stated coefficients: prefill 0.5 + 0.004·n (edge), 0.2 + 0.001·n (cloud); edge step
    0.1 + 0.0002·ctx; verify from ``verify(n, ctx)``; cloud step 0.03 + 0.0001·ctx. Multiplicative noise."""
    rng = np.random.default_rng(seed)
    jig = lambda t: float(t * (1 + noise * rng.standard_normal()))
    rows = []
    for n in (50, 100, 150, 200):
        rows.append(("edge", "prefill", n, 0, jig(0.5 + 0.004 * n), "cpu", 2))
        rows.append(("cloud", "prefill", n, 0, jig(0.2 + 0.001 * n), "gpu", None))
    for ctx in range(100, 300, 20):
        rows.append(("edge", "decode", 1, ctx, jig(0.1 + 0.0002 * ctx), "cpu", 2))
        if decode:
            rows.append(("cloud", "decode", 1, ctx, jig(0.03 + 0.0001 * ctx), "gpu", None))
        for n in (1, 3, 5, 8):
            rows.append(("cloud", "verify", n, ctx, jig(verify(n, ctx)), "gpu", None))
    return _timings(rows)


def test_fit_recovers_known_non_negative_coefficients():
    true = {"edge_prefill_a": 0.5, "edge_prefill_b": 0.004, "edge_step_a": 0.1, "edge_step_c": 0.0002,
            "cloud_prefill_a": 0.2, "cloud_prefill_b": 0.001, "verify_a": 0.04, "verify_b": 0.003,
            "verify_c": 0.00005, "cloud_step_a": 0.03, "cloud_step_c": 0.0001}
    exact = fit_costs(_table(lambda n, ctx: 0.04 + 0.003 * n + 0.00005 * ctx))
    for k, v in true.items():
        assert getattr(exact, k) == pytest.approx(v, rel=1e-6), k
    assert max(exact.fit_error.values()) < 1e-9
    noisy = fit_costs(_table(lambda n, ctx: 0.04 + 0.003 * n + 0.00005 * ctx, noise=0.01, seed=1))
    for k, v in true.items():
        assert getattr(noisy, k) == pytest.approx(v, rel=0.25, abs=1e-3 * v + 1e-6), k
    assert all(0 < e < 0.03 for e in noisy.fit_error.values())
    assert fit_warning(noisy) is None


def test_fit_clamps_where_the_free_fit_goes_negative():
    """Verify time that falls with context (a cache warming up, say) would give a negative slope; the fit holds
    it at 0 and the rest is the best fit (mean absolute relative error) without that regressor."""
    tab = _table(lambda n, ctx: 0.9 + 0.01 * n - 0.002 * ctx)
    rows = _rows(tab, "cloud_verify")
    y = rows["seconds"].to_numpy()
    n, ctx = rows["new_tokens"].to_numpy().astype(float), rows["context_tokens"].to_numpy().astype(float)
    free = _lad_by_lp(np.column_stack([np.ones_like(n), n, ctx]), y, lower=None)
    assert free[2] < 0  # the unconstrained fit is unphysical
    cost = fit_costs(tab)
    assert cost.verify_table is None and cost.verify_c == 0.0
    X2 = np.column_stack([np.ones_like(n), n])
    best = _lad_by_lp(X2, y)
    assert _rel_error(np.array([cost.verify_a, cost.verify_b]), X2, y) == pytest.approx(_rel_error(best, X2, y), rel=1e-9)
    # a negative intercept is clamped too: edge steps that grow steeply with context. With the intercept at 0 the
    # best slope minimises Σ (x/y)·|c − y/x|: the weighted median of y/x with weights x/y (a closed form)
    tab2 = _timings([("edge", "decode", 1, c, 0.002 * c - 0.15, "cpu", 2) for c in (100, 140, 180, 220)]
                    + [r for r in tab.iter_rows() if r[1] != "decode" or r[0] != "edge"])
    c2 = fit_costs(tab2)
    x = np.array([100, 140, 180, 220.0])
    yy = 0.002 * x - 0.15
    r, w = yy / x, x / yy
    order = np.argsort(r)
    cum = np.cumsum(w[order])
    median = r[order][np.searchsorted(cum, cum[-1] / 2)]
    assert c2.edge_step_a == 0.0
    assert c2.edge_step_c == pytest.approx(float(median), rel=1e-9)


def test_cloud_decode_fallback_from_verify_is_non_negative():
    cost = fit_costs(_table(lambda n, ctx: 0.9 + 0.01 * n - 0.002 * ctx, decode=False))
    assert "cloud_decode" not in cost.fit_error
    assert cost.cloud_step_a == pytest.approx(cost.verify_a + cost.verify_b)
    assert cost.cloud_step_c == cost.verify_c == 0.0


def test_unidentifiable_regressors_are_dropped():
    """All verify timings at one context: the context slope cannot be told from the intercept, so it is 0;
    proportional columns (n and ctx move together) keep one slope."""
    rows = [r for r in _table(lambda n, ctx: 0.04 + 0.003 * n).iter_rows() if not (r[1] == "verify" and r[3] != 100)]
    cost = fit_costs(_timings(rows))
    assert cost.verify_c == 0.0 and cost.verify_b == pytest.approx(0.003) and cost.verify_a == pytest.approx(0.04)
    prop = [r for r in rows if r[1] != "verify"] + [("cloud", "verify", n, 40 * n, 0.05 + 0.002 * n, "gpu", None)
                                                     for n in (1, 2, 3, 4, 5)]
    cost = fit_costs(_timings(prop))
    assert cost.verify_c == 0.0 and cost.verify_b == pytest.approx(0.002) and cost.verify_a == pytest.approx(0.05)


def test_bad_timings_are_refused():
    bad = _table(lambda n, ctx: 0.04 + 0.003 * n).with_columns(
        pl.when(pl.col("phase") == "verify").then(float("nan")).otherwise(pl.col("seconds")).alias("seconds"))
    with pytest.raises(UserError, match="non-finite"):
        fit_costs(bad)
    first = pl.int_range(pl.len()) == 0
    negative = _table(lambda n, ctx: 0.04 + 0.003 * n).with_columns(
        pl.when(first).then(-0.001).otherwise(pl.col("seconds")).alias("seconds"))
    with pytest.raises(UserError) as e:
        fit_costs(negative)
    assert str(e.value) == ("the trace's timings hold a negative or non-finite duration; re-collect the timing "
                            "probes")
    # a zero duration (a timer's resolution) is a time all the same
    zero = _table(lambda n, ctx: 0.04 + 0.003 * n).with_columns(
        pl.when(first).then(0.0).otherwise(pl.col("seconds")).alias("seconds"))
    assert fit_costs(zero).fit_error


# --- CostModel refuses unphysical fields ------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["edge_step_a", "verify_c", "cloud_prefill_b", "gate_s"])
@pytest.mark.parametrize("value", [-0.01, float("nan"), float("inf")])
def test_cost_model_refuses_negative_or_non_finite(field, value):
    with pytest.raises(UserError, match=field):
        CostModel(**{field: value})
    with pytest.raises(UserError, match=field):
        replace(CostModel(), **{field: value})


def test_scaled_refuses_non_positive_speedups():
    for s in (0.0, -2.0):
        with pytest.raises(UserError, match="positive"):
            CostModel().scaled(edge_speedup=s)


def test_cli_refuses_a_negative_speed():
    r = CliRunner().invoke(main, ["simulate", "--edge-tps", "-2"])
    assert r.exit_code == 2 and "edge_step_a" in r.output and r.output.count("\n") == 1


def test_predict_prices_each_phase_by_hand():
    """What the cost model says one measured call takes, per phase, with every coefficient non-zero."""
    c = CostModel(edge_prefill_a=1.0, edge_prefill_b=0.01, edge_step_a=0.5, edge_step_c=0.001,
                  cloud_prefill_a=0.3, cloud_prefill_b=0.002, verify_a=0.04, verify_b=0.003, verify_c=0.0001,
                  cloud_step_a=0.05, cloud_step_c=0.0002)
    n, ctx = [10, 20], [100, 300]
    want = {("edge", "prefill"): [1.1, 1.2], ("edge", "decode"): [0.6, 0.8], ("cloud", "prefill"): [0.32, 0.34],
            ("cloud", "verify"): [0.04 + 0.03 + 0.01, 0.04 + 0.06 + 0.03], ("cloud", "decode"): [0.07, 0.11]}
    for (side, phase), v in want.items():
        assert c.predict(side, phase, n, ctx) == pytest.approx(v, abs=1e-12), (side, phase)
    with pytest.raises(UserError) as e:
        c.predict("edge", "verify", n, ctx)
    assert str(e.value) == "unknown timing phase edge verify; timings have edge/cloud prefill, decode, verify"
    # with a table: its entry, and past 16 tokens the last entry plus verify_b per extra token, plus the context
    t = replace(c, verify_table=tuple(0.01 * i for i in range(1, 17)), verify_b=0.002)
    assert t.predict("cloud", "verify", [1, 16, 20], [0, 100, 0]) == pytest.approx([0.01, 0.17, 0.168], abs=1e-12)
    assert t.verify_block_s([0, 1]) == pytest.approx([0.01, 0.01], abs=1e-15)  # below one token: the first entry


def _fitted_by_hand():
    def choice(model, table_by, cv_lin, cv_tab, err_lin, err_tab, better, priced):
        return {"model": model, "table_by": table_by, "table_priced": priced, "table_fits_better": better,
                "cv_linear": cv_lin, "cv_table": cv_tab, "error_linear": err_lin, "error_table": err_tab}

    return CostModel(
        fit_error={"cloud_decode": 0.05, "extra_phase": 0.3, "edge_prefill": 0.0, "cloud_verify": 0.08,
                   "edge_decode": 0.12},
        fit_rows={"edge_prefill": 1, "edge_decode": 40, "cloud_verify": 64, "extra_phase": 1},  # cloud decode: none
        fit_choice={"edge_prefill": choice("linear", "prompt length", None, None, 0.0, 0.0, False, False),
                    "edge_decode": choice("linear", "context", 0.15, 0.10, 0.12, 0.09, True, False),
                    "cloud_verify": choice("table", "block size", 0.2, 0.1, 0.18, 0.08, True, True),
                    "cloud_decode": choice("linear", "context", 0.06, 0.07, 0.05, 0.04, False, False)})


def test_fit_summary_by_hand():
    """Phases in flag order then the rest; per phase the model in use, its errors, the other model where it is
    the better fit or the one not used, how many timings, and "no CV" where nothing could be held out."""
    head = "fit error (mean absolute on the trace's own timings, then cross-validated (CV) on held-out shapes): "
    parts = ["edge prefill 0% (linear; 1 timing, no CV)",
             "edge decode 12%, CV 15% (linear; a table by context 9%, CV 10%, not priced; 40 timings)",
             "cloud verify 8%, CV 10% (table by block size; linear 18%, CV 20%; 64 timings)",
             "cloud decode 5%, CV 6% (linear)",
             "extra phase 30% (1 timing)"]
    cost = _fitted_by_hand()
    assert fit_summary(cost) == head + ", ".join(parts)
    assert fit_summary(cost, overridden={"edge_decode", "extra_phase"}) == head + ", ".join(parts[:1] + parts[2:4])
    assert fit_summary(cost, overridden=set(cost.fit_error)) is None


def test_fit_warning_by_hand():
    many = CostModel(fit_error={"edge_decode": 0.3, "cloud_verify": 0.6, "edge_prefill": 0.25, "extra": 0.4})
    assert fit_warning(many) == (
        "the fitted edge decode and cloud verify and extra costs are off by 30% and 60% and 40% on average on the "
        "trace's own timings (more than 25%), so latencies that depend on them are rough; collect more timing "
        "probes or give the cost by flag (--edge-tps, --cloud-verify)")
    assert fit_warning(many, overridden={"edge_decode", "cloud_verify"}) == (
        "the fitted extra cost is off by 40% on average on the trace's own timings (more than 25%), so latencies "
        "that depend on it are rough; collect more timing probes or give the costs by flag")
    assert fit_warning(many, bound=0.6) is None
    assert fit_warning(many, bound=0.35) == (
        "the fitted cloud verify and extra costs are off by 60% and 40% on average on the trace's own timings (more "
        "than 35%), so latencies that depend on them are rough; collect more timing probes or give the cost by flag "
        "(--cloud-verify)")
    assert fit_warning(many, bound=0.57).startswith("the fitted cloud verify cost is off by 60% on average on the "
                                                    "trace's own timings (more than 57%)")


def test_verify_table_text_by_hand():
    from sectrace.simulate.costs import verify_table_text

    assert verify_table_text((0.5, 0.25)) == "0.5 0.25" and verify_table_text((0.5, 0.25), 2.0) == "1.0 0.5"
    assert verify_table_text(None) is None


def test_scaled_and_linear_verify_by_hand():
    """A speed-up divides its side's model times (the gate's time is neither side's); a linear verify replaces the
    table, its three coefficients and the table's note in the source."""
    from sectrace.simulate.costs import TABLE_NOTE

    c = CostModel(edge_prefill_a=1.0, edge_prefill_b=0.01, edge_step_a=0.5, edge_step_c=0.001, gate_s=0.002,
                  cloud_prefill_a=0.3, cloud_prefill_b=0.002, verify_a=0.04, verify_b=0.003, verify_c=0.0001,
                  cloud_step_a=0.05, cloud_step_c=0.0002)
    s = c.scaled(edge_speedup=2.0, cloud_speedup=4.0)
    want = {"edge_prefill_a": 0.5, "edge_prefill_b": 0.005, "edge_step_a": 0.25, "edge_step_c": 0.0005,
            "gate_s": 0.002, "cloud_prefill_a": 0.075, "cloud_prefill_b": 0.0005, "verify_a": 0.01,
            "verify_b": 0.00075, "verify_c": 0.000025, "cloud_step_a": 0.0125, "cloud_step_c": 0.00005}
    assert {f: getattr(s, f) for f in want} == pytest.approx(want, abs=1e-15)
    assert c.scaled() == c and c.scaled(cloud_speedup=2.0).edge_step_a == 0.5
    assert c.scaled(edge_speedup=2.0).verify_a == 0.04
    t = replace(c, verify_table=tuple(0.01 * i for i in range(1, 17)), verify_b=0.002,
                source="fitted to the trace's timings" + TABLE_NOTE)
    assert t.scaled(cloud_speedup=2.0).verify_table == pytest.approx([0.005 * i for i in range(1, 17)], abs=1e-15)
    for bad, got in (((1.0, 0.0), "edge 1, cloud 0"), ((0.0, 1.0), "edge 0, cloud 1"), ((1.0, -2.0), "edge 1, cloud -2")):
        with pytest.raises(UserError) as e:
            c.scaled(*bad)
        assert str(e.value) == f"speed-ups must be positive (got {got})"
    lin = t.with_linear_verify(0.1, 0.0015, 0.0003)
    assert (lin.verify_a, lin.verify_b, lin.verify_c, lin.verify_table) == (0.1, 0.0015, 0.0003, None)
    assert lin.source == "fitted to the trace's timings" and lin.edge_step_a == 0.5
    assert t.with_linear_verify(0.1, 0.0015, 0.0003, source="preset jetson").source == "preset jetson"


def test_cost_model_refusals_and_table_rules_by_hand():
    with pytest.raises(UserError) as e:
        CostModel(gate_s="fast")
    assert str(e.value) == ("cost gate_s = 'fast' must be a finite number of seconds ≥ 0 (check the speeds, times "
                            "and speed-ups given)")
    table_msg = "verify_table must list 16 finite times ≥ 0 (seconds of a verify call of 1 … 16 tokens)"
    for bad in (("a",) * 16, (0.01,) * 15, (0.01,) * 15 + (float("inf"),), (0.01,) * 15 + (-0.01,)):
        with pytest.raises(UserError) as e:
            CostModel(verify_table=bad, verify_b=0.0)
        assert str(e.value) == table_msg
    ok = CostModel(verify_table=[0.0] + [0.032] * 15, verify_b=0.0)  # a zero entry is a time; a list is stored as a tuple
    assert ok.verify_table == (0.0,) + (0.032,) * 15 and type(ok.verify_table) is tuple
    # 0.032 s for every size: the smallest time per token is 0.032 / 16 = 0.002 s, and verify_b may equal it
    assert CostModel(verify_table=(0.032,) * 16, verify_b=0.002).verify_b == 0.002
    with pytest.raises(UserError) as e:
        CostModel(verify_table=(0.032,) * 16, verify_b=0.003)
    assert str(e.value) == ("verify_b = 0.003 s/token exceeds the verify table's smallest time per token (0.002 s); "
                            "a call's parts would go negative")
