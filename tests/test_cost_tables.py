"""Cost models that fit how hardware behaves: per phase, a linear model or a measured table, chosen by
cross-validated error on held-out shapes; a verify table priced linearly through per-block-size call counts.

Known-answer tests on synthetic timings (a nonlinear table is found and recovered, linear data keep the linear
model), the bundled real trace (the table wins by cross-validation and is priced in every engine alike), and an
event-by-event clock written here from the CostModel docstring, independent of timing.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from sectrace.cli import main
from sectrace.errors import UserError
from sectrace.gates import parse_gate
from sectrace.protocol import Accept, Draft, GateCall, Policy, Prefill, Verify
from sectrace.simulate import CostModel, Network, Replayer, cost_vector, fit_costs, latency, profiles
from sectrace.simulate.costs import CV_FOLDS, TABLE_NOTE, VERIFY_TABLE_MAX, fit_summary
from sectrace.simulate.replay import DOWN_PAYLOAD_BYTES, FI, TOKEN_BYTES, VERIFY_SIZE_FEATURES
from sectrace.simulate.spans import run_timeline
from sectrace.trace import load_trace, sample_trace_path

#: Verify seconds per block size as this CPU measured them (the bundled trace at context 181, rounded): 4 tokens
#: are faster than 3, 8 faster than 7, 12 faster than 11. Not a line.
CPU_TABLE = (0.39, 0.75, 1.09, 0.77, 0.80, 0.83, 1.08, 0.77, 0.95, 0.99, 1.17, 0.76, 0.86, 0.95, 1.06, 0.95)


def _timings(verify, sizes=range(1, 17), ctxs=(117, 149, 181), repeats=3, noise=0.0, seed=0):
    """A full timings table; verify rows from ``verify(n, ctx)`` with multiplicative noise, the rest linear."""
    rng = np.random.default_rng(seed)
    jig = lambda t: float(t * (1 + noise * rng.standard_normal()))  # noqa: E731
    rows = [("edge", "prefill", 117, 0, 1.0, "cpu", 2), ("cloud", "prefill", 117, 0, 2.7, "cpu", None)]
    for ctx in ctxs:
        for _ in range(repeats):
            rows.append(("edge", "decode", 1, ctx, jig(0.15), "cpu", 2))
            rows.append(("cloud", "decode", 1, ctx, jig(0.37), "cpu", None))
            for n in sizes:
                rows.append(("cloud", "verify", n, ctx, jig(verify(n, ctx)), "cpu", None))
    return pl.DataFrame(rows, schema={"side": pl.String, "phase": pl.String, "new_tokens": pl.Int32,
                                      "context_tokens": pl.Int32, "seconds": pl.Float64, "device": pl.String,
                                      "threads": pl.Int32}, orient="row")


# --- the choice, on timings with a known answer --------------------------------------------------------------


def test_a_nonlinear_table_is_chosen_and_recovered():
    cost = fit_costs(_timings(lambda n, ctx: CPU_TABLE[n - 1] + 0.0004 * ctx, noise=0.02, seed=1))
    ch = cost.fit_choice["cloud_verify"]
    assert ch["model"] == "table" and cost.verify_table is not None
    assert ch["cv_table"] + ch["se_table"] < ch["cv_linear"]  # the rule that chose it
    assert ch["cv_table"] < 0.05 and ch["cv_linear"] > 0.1  # 2 % noise vs. a line through a zig-zag
    # recovered: each entry within a few per cent of the truth (at context 0), and the context slope
    assert np.allclose(cost.verify_table, CPU_TABLE, rtol=0.06, atol=0.02)
    assert cost.verify_c == pytest.approx(0.0004, rel=0.3)
    assert TABLE_NOTE in cost.source
    assert cost.verify_b * np.arange(1, 17) == pytest.approx(np.minimum(cost.verify_b * np.arange(1, 17),
                                                                        cost.verify_table))
    # the folds held out whole shapes: 48 (size, context) shapes dealt into CV_FOLDS folds
    assert (ch["shapes"], ch["folds"]) == (48, CV_FOLDS)


def test_linear_timings_keep_the_linear_model():
    cost = fit_costs(_timings(lambda n, ctx: 0.3 + 0.04 * n + 0.0002 * ctx, noise=0.02, seed=2))
    ch = cost.fit_choice["cloud_verify"]
    assert ch["model"] == "linear" and cost.verify_table is None and TABLE_NOTE not in cost.source
    assert (cost.verify_a, cost.verify_b) == pytest.approx((0.3, 0.04), rel=0.1)
    # exact linear timings: both models predict held-out shapes perfectly, and the simpler one is kept
    exact = fit_costs(_timings(lambda n, ctx: 0.3 + 0.04 * n + 0.0002 * ctx))
    assert exact.fit_choice["cloud_verify"]["model"] == "linear"
    assert exact.fit_choice["cloud_verify"]["cv_linear"] < 1e-9


def test_only_some_sizes_measured_interpolates_and_extends():
    """Probes at sizes 1, 2, 4, 8, 16 only: the table reads between them linearly; the fit keeps b·n ≤ table."""
    truth = lambda n: 0.2 + 0.3 * np.sqrt(n)  # noqa: E731  (concave: a line misses both ends)
    cost = fit_costs(_timings(lambda n, ctx: truth(n), sizes=(1, 2, 4, 8, 16), noise=0.01, seed=4))
    assert cost.verify_table is not None
    t = np.array(cost.verify_table)
    for lo, hi in ((2, 4), (4, 8), (8, 16)):
        mid = (lo + hi) // 2
        assert t[mid - 1] == pytest.approx((t[lo - 1] * (hi - mid) + t[hi - 1] * (mid - lo)) / (hi - lo))
    assert np.all(cost.verify_b * np.arange(1, 17) <= t + 1e-12)
    # a 20-token call: the 16-token entry plus b per token beyond
    assert float(cost.verify_block_s(20)) == pytest.approx(t[15] + 4 * cost.verify_b)


def test_one_shape_cannot_be_cross_validated():
    cost = fit_costs(_timings(lambda n, ctx: 0.5, sizes=(5,), ctxs=(100,)))
    ch = cost.fit_choice["cloud_verify"]
    assert ch["model"] == "linear" and ch["cv_linear"] is None and ch["folds"] == 0
    assert "no CV" in fit_summary(cost)


# --- the bundled real trace ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real():
    return load_trace(sample_trace_path())


@pytest.fixture(scope="module")
def fitted(real):
    return fit_costs(real.timings)


def test_real_trace_verify_table_beats_linear_by_cross_validation(real, fitted):
    """Before: one line a + b·n + c·ctx, 44 % mean error on the trace's verify timings (least squares). After:
    each model fitted by the error it is scored by, scored on held-out shapes; the table wins clearly."""
    ch = fitted.fit_choice["cloud_verify"]
    assert ch["model"] == "table"
    assert ch["cv_table"] + ch["se_table"] < ch["cv_linear"]
    assert ch["cv_table"] < 0.25 and ch["cv_linear"] > 0.25
    assert fitted.fit_error["cloud_verify"] == pytest.approx(ch["error_table"]) and ch["error_table"] < 0.2
    # recomputed here: leave-one-context-out with per-size medians beats the line through the same folds
    v = real.timings.filter((pl.col("side") == "cloud") & (pl.col("phase") == "verify"))
    n, ctx, y = (v[c].to_numpy().astype(float) for c in ("new_tokens", "context_tokens", "seconds"))
    err_t, err_l = [], []
    for c in np.unique(ctx):
        tr, te = ctx != c, ctx == c
        med = {s: np.median(y[tr & (n == s)]) for s in np.unique(n)}
        err_t += list(np.abs(np.array([med[s] for s in n[te]]) - y[te]) / y[te])
        A = np.column_stack([np.ones(tr.sum()), n[tr]])
        ab = np.linalg.lstsq(A, y[tr], rcond=None)[0]
        err_l += list(np.abs(ab[0] + ab[1] * n[te] - y[te]) / y[te])
    assert np.mean(err_t) < np.mean(err_l)
    # the entries are the measured shape: 3 tokens slower than 4, 11 slower than 12
    t = fitted.verify_table
    assert t[2] > t[3] * 1.2 and t[10] > t[11] * 1.2
    line = fit_summary(fitted)
    assert f"cloud verify {100 * ch['error_table']:.0f}%, CV {100 * ch['cv_table']:.0f}% (table by block size; " \
           f"linear {100 * ch['error_linear']:.0f}%, CV {100 * ch['cv_linear']:.0f}%; 144 timings)" in line


def _policies(max_new):
    out = []
    for k, gate, acc, cache, bonus in itertools.product((1, 3, 5), ("always", "entropy:2.5"), ("top1", "rank:20"),
                                                        ("stateful", "stateless"), (True, False)):
        out.append(Policy(k=k, gate=parse_gate(gate), gate_spec=gate, accept=Accept.parse(acc), privacy="features",
                          cloud_cache=cache, bonus=bonus, max_new_tokens=max_new))
    return out


def _clock(run, policy, utt, cost: CostModel, net: Network) -> float:
    """Event by event from the CostModel docstring: a stateful call of its own runs pending + n tokens at
    table[size] + b·(size − 16)⁺ + c·context; a call that prefills runs prompt, context and block in one prefill."""
    t = 0.0
    stateless = policy.cloud_cache == "stateless"
    cprompt = utt["cloud_prompt_tokens"]
    up = lambda b: net.rtt_s / 2 + (b + net.overhead_bytes) / net.up_Bps  # noqa: E731
    down = lambda b: net.rtt_s / 2 + (b + net.overhead_bytes) / net.down_Bps  # noqa: E731
    for ev in run.events:
        if isinstance(ev, Prefill):
            t += cost.edge_prefill_a + cost.edge_prefill_b * utt["edge_prompt_tokens"]
        elif isinstance(ev, Draft) and ev.ctx:
            t += cost.edge_step_a + cost.edge_step_c * (utt["edge_prompt_tokens"] + ev.ctx)
        elif isinstance(ev, GateCall):
            t += cost.gate_s
        elif isinstance(ev, Verify):
            if stateless:  # one pass from an empty cache over prompt, caption so far and block
                payload = utt["feature_bytes"] + TOKEN_BYTES * (utt["blind_prompt_tokens"] + ev.ctx + ev.n)
                t += up(payload) + cost.cloud_prefill_a + cost.cloud_prefill_b * (cprompt + ev.ctx + ev.n)
            elif ev.first:  # the session opens: one pass over prompt, unsent context and block
                payload = utt["feature_bytes"] + TOKEN_BYTES * (ev.unsent + ev.n + utt["blind_prompt_tokens"])
                t += up(payload) + cost.cloud_prefill_a + cost.cloud_prefill_b * (cprompt + ev.pending + ev.n)
            else:
                size = ev.pending + ev.n
                entry = cost.verify_table[min(size, 16) - 1] + cost.verify_b * max(size - 16, 0)
                t += up(TOKEN_BYTES * (ev.unsent + ev.n)) + entry + cost.verify_c * (cprompt + ev.ctx - ev.pending)
            t += down(DOWN_PAYLOAD_BYTES)
    return t


def test_closed_form_fleet_and_timeline_price_the_table_alike(real, fitted):
    """Every engine prices the same features: the closed form equals the independent clock above, the fleet's
    one-device run equals the closed form, and a timeline's spans add up to it."""
    from sectrace.simulate.fleet import Fleet, plans, simulate_fleet

    assert fitted.verify_table is not None
    net = Network(rtt_s=0.05)
    theta = cost_vector(fitted, net)
    rp = Replayer(real)
    utts = {r["utt_id"]: r for r in real.utterances.iter_rows(named=True)}
    max_new = int(real.manifest["decoding"].get("max_new_tokens", 64))
    sizes_seen = set()
    for pol in _policies(max_new):
        rep = rp.replay(pol)
        lat = latency(rep.total, theta)
        for i, (uid, run_) in enumerate(zip(rep.utt_ids, rep.runs)):
            if run_ is None:
                continue
            assert lat[i] == pytest.approx(_clock(run_, pol, utts[uid], fitted, net), abs=1e-9)
            sizes_seen |= {ev.pending + ev.n for ev in run_.events
                           if isinstance(ev, Verify) and not ev.first and pol.cloud_cache == "stateful"}
            spans, _ = run_timeline(run_, pol, utts[uid], theta)
            assert sum(s.dur_s for s in spans) == pytest.approx(lat[i], abs=1e-9)
            assert all(s.dur_s >= 0 for s in spans)
        if pol.k == 5 and pol.bonus:
            df = simulate_fleet(plans(rp, rep), fitted, net, Fleet(), stateful=pol.cloud_cache == "stateful")
            np.testing.assert_allclose(df["latency_s"].to_numpy(), lat[rep.covered], rtol=0, atol=1e-9)
    # the replays exercised several block sizes, including ones other than k (blocks cut short, resyncs)
    assert len(sizes_seen) >= 4 and sizes_seen - {1, 3, 5}


def test_a_call_of_each_size_costs_its_table_entry(fitted):
    theta = cost_vector(fitted, Network(rtt_s=0.0))
    for j in range(1, VERIFY_TABLE_MAX + 4):
        f = np.zeros(len(theta))
        f[FI["verify_calls"]] = 1
        f[FI["verify_tokens"]] = j
        f[FI[VERIFY_SIZE_FEATURES[min(j, 16) - 1]]] = 1
        want = fitted.verify_table[min(j, 16) - 1] + fitted.verify_b * max(j - 16, 0)
        assert f @ theta == pytest.approx(want, abs=1e-12)


def test_presets_flags_and_speedups_handle_the_table(fitted):
    a100 = profiles.cloud_device("study-a100").apply(fitted)
    assert a100.verify_table is None and TABLE_NOTE not in a100.source and "cloud=study-a100" in a100.source
    fast = fitted.scaled(cloud_speedup=4.0)
    assert np.allclose(np.array(fast.verify_table) * 4, fitted.verify_table)
    assert fast.verify_b * 4 == pytest.approx(fitted.verify_b)
    r = CliRunner().invoke(main, ["simulate", "--rtt", "50ms", "--cloud-verify", "300ms", "--json"])
    assert r.exit_code == 0, r.output
    import json

    costs = json.loads(r.stdout)["costs"]
    assert costs["verify_table"] is None and costs["verify_a"] == 0.3
    r = CliRunner().invoke(main, ["simulate", "--rtt", "50ms", "--json"])
    costs = json.loads(r.stdout)["costs"]
    assert costs["fit_choice"]["cloud_verify"]["model"] == "table" and len(costs["verify_table"]) == 16


def test_a_table_that_would_price_a_part_below_zero_is_refused():
    table = tuple(0.1 * j for j in range(1, 17))
    CostModel(verify_table=table, verify_b=0.1)  # b·n equals the table: allowed
    with pytest.raises(UserError, match="verify_b"):
        CostModel(verify_table=table, verify_b=0.2)
    with pytest.raises(UserError, match="verify_table"):
        CostModel(verify_table=(0.1,) * 15)
    with pytest.raises(UserError, match="verify_table"):
        CostModel(verify_table=(0.1,) * 15 + (float("nan"),))


def test_probes_cover_every_block_size_a_policy_can_send():
    from sectrace.collect.probes import verify_sizes

    assert verify_sizes() == tuple(range(1, 17))
    assert verify_sizes([1, 3, 5, 8]) == tuple(range(1, 17))
    assert verify_sizes([0, 5, 24]) == tuple(range(1, 26))  # k = 24: 24 drafted + the resynced correction


def test_table_helpers_by_hand():
    """_interp: linear between measured shapes, flat below, flat or rising by `above` past the last;
    _verify_table: b capped at the smallest time per token, the 16 entries read off the measured sizes;
    _cv: shapes dealt round-robin into folds, the mean relative error and its standard error (ddof 1)."""
    from sectrace.simulate.costs import _cv, _interp, _verify_table

    xs, vals = np.array([1.0, 4.0]), np.array([1.0, 4.0])
    assert _interp(xs, vals, [0, 1, 2.5, 4, 6]) == pytest.approx([1, 1, 2.5, 4, 4])
    assert _interp(xs, vals, [2.5, 6], above=0.5) == pytest.approx([2.5, 5.0])
    # sizes 1 and 4 take 0.02 s and 0.05 s: 0.05 / 4 = 0.0125 s per token caps b = 0.02
    table, b = _verify_table(np.array([1.0, 4.0]), np.array([0.02, 0.05]), 0.02)
    assert b == pytest.approx(0.0125) and len(table) == 16
    assert [table[i] for i in (0, 1, 2, 3, 4, 15)] == pytest.approx([0.02, 0.03, 0.04, 0.05, 0.0625, 0.2])
    assert _verify_table(np.array([1.0, 4.0]), np.array([0.02, 0.05]), 0.001)[1] == 0.001  # below the cap: kept
    # 12 rows over 12 shapes (sizes 1..12), 10 folds: shape i (sorted) is tested in fold i % 10
    keys = np.column_stack([np.arange(12, 0, -1), np.zeros(12)])
    y = np.ones(12)
    folds = []

    def predict(train, test):
        folds.append(sorted(keys[test, 0].astype(int).tolist()))
        return np.where(keys[test, 0] % 2 == 0, 1.5, 1.0)  # even sizes 50 % off, odd ones exact

    got = _cv(keys, y, predict)
    assert folds == [[1, 11], [2, 12]] + [[i] for i in range(3, 11)]
    err = np.array([0.5 if i % 2 == 0 else 0.0 for i in range(12, 0, -1)])
    assert got == {"error": pytest.approx(0.25), "se": pytest.approx(np.std(err, ddof=1) / np.sqrt(12)),
                   "folds": 10, "shapes": 12}
    assert _cv(np.array([[3.0, 0.0], [3.0, 0.0]]), np.ones(2), predict) is None  # one shape: nothing to hold out


def test_fit_helpers_at_their_edges_by_hand(monkeypatch):
    """Two shapes are enough to cross-validate (one fold each, a finite standard error); a table without context
    has no context slope; a constant or proportional regressor is not identifiable; the error is relative; a
    failed linear program is a one-sentence error."""
    import scipy.optimize

    from sectrace.errors import UserError
    from sectrace.simulate.costs import _cv, _identifiable, _lad, _mape, _table

    two = _cv(np.array([[1.0, 0.0], [2.0, 0.0]]), np.ones(2), lambda tr, te: np.full(int(te.sum()), 1.5))
    assert (two["folds"], two["shapes"], two["error"], two["se"]) == (2, 2, 0.5, 0.0)
    xs, vals, slope = _table(np.array([1.0, 1.0, 2.0]), np.array([0.1, 0.1, 0.3]))
    assert xs.tolist() == [1.0, 2.0] and vals == pytest.approx([0.1, 0.3]) and slope == 0.0
    X = np.array([[1.0, 2.0, 4.0, 7.0], [1.0, 3.0, 6.0, 7.0], [1.0, 5.0, 10.0, 7.0], [1.0, 6.0, 12.0, 7.0]])
    assert _identifiable(X, ["a", "2a", "const"]) == [0]  # 2a is a's double, const the intercept again
    assert _mape(np.array([1.5, 0.5]), np.array([1.0, 0.25])) == pytest.approx(0.75)  # 50 % and 100 % off

    class Failed:
        status, message = 4, "numerical difficulties"

    monkeypatch.setattr(scipy.optimize, "linprog", lambda *a, **k: Failed())
    with pytest.raises(UserError) as e:
        _lad(np.ones((2, 1)), np.ones(2))
    assert str(e.value) == ("fitting the timing costs failed (numerical difficulties); re-collect the timing "
                            "probes")
