"""The study's Table 2 explained (reports/study.py, `sectrace study`, docs/study.md).

The comparison's numbers are computed, never typed in: the study's rows come from reports.tables.STUDY, the
simulated ones are recomputed here by hand from the replayed runs; the puzzle's conditions are found by the map
(stateless + features re-upload + a gate that escalates nearly every block: slower than edge-only, as the study
measured; stateful with the bonus token at a low RTT: faster); docs/study.md quotes exactly what the command
computes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from sectrace.cli import main
from sectrace.network import Network
from sectrace.protocol import drafter_only
from sectrace.reports import study
from sectrace.reports.tables import STUDY
from sectrace.simulate import CostModel, Replayer, cost_vector, latency, profiles
from sectrace.simulate.costs import COST_FIELDS
from sectrace.trace import load_trace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The study as docs/study.md quotes it: the 12-utterance study trace (seed 0) and the full map (~15 s)."""
    d = tmp_path_factory.mktemp("study")
    return study.run(None, d), d


@pytest.fixture(scope="module")
def rp(work):
    return Replayer(load_trace(work[0].trace_path))


# --- the study's own rows ------------------------------------------------------------------------------------


def test_the_rows_do_not_add_up_as_defined_and_the_consistent_reading_does():
    d = study.definitions()
    for (key, v), r in zip(STUDY.items(), d.iter_rows(named=True)):
        assert r["TTFT + OET (s)"] > r["total (s)"]  # OET = total − TTFT would make these equal
        assert 0 < r["total − OET (s)"] < 0.2  # the rows fit OET ≈ the whole call
        assert r["tokens N = OTPS×OET"] == pytest.approx(v["otps"] * v["oet_s"])
    n = STUDY["edge_3b"]["otps"] * STUDY["edge_3b"]["oet_s"]
    assert 73 < n < 73.2 and d["tokens N = OTPS×OET"].max() < 80.2
    # the consistent reading reproduces each baseline's OET for a caption of the study's length, by construction
    cons = study.study_costs("consistent")
    assert cons.edge_prefill_a + (n - 1) * cons.edge_step_a == pytest.approx(STUDY["edge_3b"]["oet_s"])
    nc = STUDY["cloud_7b"]["otps"] * STUDY["cloud_7b"]["oet_s"]
    assert cons.cloud_prefill_a + (nc - 1) * cons.cloud_step_a == pytest.approx(STUDY["cloud_7b"]["oet_s"])
    # the consistent reading is the presets themselves (one definition: profiles.study_decode_rate)
    preset = profiles.cloud_device("study-a100").apply(profiles.edge_device("study-cpu-2core").apply(CostModel()))
    assert all(getattr(cons, f) == getattr(preset, f) for f in COST_FIELDS) and cons.verify_table is None
    # OTPS read as the decode rate: the prefill counted twice
    pre = study.study_costs("otps")
    assert pre.edge_step_a == pytest.approx(1 / STUDY["edge_3b"]["otps"])
    assert pre.edge_prefill_a + (n - 1) * pre.edge_step_a > 1.15 * STUDY["edge_3b"]["total_s"]


# --- Table 2, side by side: computed from the runs -------------------------------------------------------------


def test_table2_rows_are_computed_from_the_trace(work, rp):
    res = work[0]
    t = res.table
    studied = t.filter(pl.col("source").str.starts_with("measured"))
    assert studied["total (s)"].to_list() == [v["total_s"] for v in STUDY.values()]
    max_new = int(rp.trace.manifest["decoding"]["max_new_tokens"])
    edge = rp.replay(drafter_only(max_new))
    tokens = np.array([len(r.tokens) for r in edge.runs])
    for reading in ("otps", "consistent"):
        c = study.study_costs(reading)
        label = study.READING_LABEL[reading]
        # edge-only by hand: the prefill yields the first token, then one step per further token (no context cost)
        want = float(np.mean(c.edge_prefill_a + (tokens - 1) * c.edge_step_a))
        row = t.filter((pl.col("system") == "edge-only") & pl.col("source").str.contains(label, literal=True)).row(0, named=True)
        assert row["total (s)"] == pytest.approx(want, rel=1e-12)
        assert row["tokens"] == pytest.approx(tokens.mean())
        assert row["OTPS (tok/s)"] == pytest.approx(row["tokens"] / (row["total (s)"] - row["TTFT (s)"]))
        # the hybrid row is the closed form at the study's point
        pol = res.point.policy(max_new)
        rep = rp.replay(pol)
        lat = latency(rep.total[rep.covered], cost_vector(c, Network(rtt_s=res.point.rtt_s)))
        hyb = t.filter(pl.col("system").str.starts_with("hybrid") & pl.col("source").str.contains(label, literal=True))
        assert hyb["total (s)"][0] == pytest.approx(float(lat.mean()), rel=1e-12)
    # the consistent reading lands near the study's baselines on captions of the study's length; OTPS-as-rate does not
    cons_edge = t.filter((pl.col("system") == "edge-only") & pl.col("source").str.contains("consistent"))
    pre_edge = t.filter((pl.col("system") == "edge-only") & pl.col("source").str.contains("OTPS read"))
    per_tok = STUDY["edge_3b"]["total_s"] / (STUDY["edge_3b"]["otps"] * STUDY["edge_3b"]["oet_s"])
    assert cons_edge["total (s)"][0] / cons_edge["tokens"][0] == pytest.approx(per_tok, rel=0.03)
    assert pre_edge["total (s)"][0] / pre_edge["tokens"][0] > 1.15 * per_tok
    assert 70 <= cons_edge["tokens"][0] <= 81


def test_another_trace_gives_other_numbers(tmp_path):
    """Nothing is typed in: a study trace from another seed prices differently; the study's rows stay."""
    path = study.make_study_trace(tmp_path / "t", utterances=3, seed=7, ks=(5,), gates=("always",))
    t = study.table2_comparison(Replayer(load_trace(path)))
    base = study.make_study_trace(tmp_path / "u", utterances=3, seed=0, ks=(5,), gates=("always",))
    u = study.table2_comparison(Replayer(load_trace(base)))
    sim = pl.col("source").str.starts_with("sectrace")
    assert t.filter(~sim).equals(u.filter(~sim))
    assert not np.allclose(t.filter(sim)["total (s)"].to_numpy(), u.filter(sim)["total (s)"].to_numpy())


# --- the puzzle ------------------------------------------------------------------------------------------------


def test_the_puzzle_conditions_are_found(work):
    res = work[0]
    g, here = res.grid, res.answer["point"]
    # the study's setup: stateless, features re-uploaded, every block escalated, no bonus token -> slower,
    # within a few per cent of the study's measured ratio per caption
    assert here["slower"] and here["escalation_share"] == 1.0
    assert here["ratio"] == pytest.approx(study.STUDY_RATIO, abs=0.06)
    # every call is a whole prefill (the cloud re-reads prompt, audio and caption) plus two network legs
    assert here["call_s"] > study.study_costs("consistent").cloud_prefill_a + 0.01
    # a stateful cloud that returns a bonus token at a data-centre RTT beats edge-only with the same gate and k
    def row(**kw):
        sel = g
        for key, val in kw.items():
            sel = sel.filter((pl.col(key) - val).abs() < 1e-12) if isinstance(val, float) else sel.filter(
                pl.col(key) == val)
        assert sel.height == 1, kw
        return sel.row(0, named=True)

    up = res.point.up_Bps
    fast = row(bonus=True, cloud_cache="stateful", privacy="features", gate="always", k=5, rtt_s=0.01, up_Bps=up)
    assert fast["ratio"] < 0.95
    # ... until the round trip costs more than the edge step a bonus token saves
    slow = row(bonus=True, cloud_cache="stateful", privacy="features", gate="always", k=5, rtt_s=0.5, up_Bps=up)
    assert slow["ratio"] > 1
    # stateless: slower the more the gate escalates, and slower again when the features crawl up a slow uplink
    sl = g.filter((pl.col("bonus") == False) & (pl.col("cloud_cache") == "stateless")  # noqa: E712
                  & (pl.col("privacy") == "features") & (pl.col("k") == 5) & ((pl.col("rtt_s") - 0.01).abs() < 1e-12)
                  & ((pl.col("up_Bps") - up).abs() < 1e-6)).sort("escalation_share")
    assert np.all(np.diff(sl["ratio"].to_numpy()) >= -1e-12) and sl["ratio"][-1] > 1.2
    slow_up = row(bonus=False, cloud_cache="stateless", privacy="features", gate="always", k=5, rtt_s=0.01,
                  up_Bps=2e6 / 8)
    tok_slow_up = row(bonus=False, cloud_cache="stateless", privacy="token-only", gate="always", k=5, rtt_s=0.01,
                      up_Bps=2e6 / 8)
    assert slow_up["ratio"] > here["ratio"] + 0.1 > tok_slow_up["ratio"]
    # without the bonus token the edge drafts every token anyway: never faster
    assert res.answer["never_faster_without_bonus"]
    assert g.filter(~pl.col("bonus") & (pl.col("cloud_calls") > 0))["slower"].all()
    # a gate that never fires is edge-only
    quiet = g.filter(pl.col("cloud_calls") == 0)
    assert quiet.height and np.allclose(quiet["ratio"].to_numpy(), 1.0)


def test_a_grid_entry_is_the_closed_form(work, rp):
    res = work[0]
    r = res.grid.filter((pl.col("bonus")) & (pl.col("cloud_cache") == "stateless") & (pl.col("privacy") == "token-only")
                        & (pl.col("gate") == "entropy:2") & (pl.col("k") == 3)
                        & ((pl.col("rtt_s") - 0.1).abs() < 1e-12) & ((pl.col("up_Bps") - 2e6 / 8).abs() < 1e-6))
    r = r.row(0, named=True)
    max_new = int(rp.trace.manifest["decoding"]["max_new_tokens"])
    pol = study._policy(3, "entropy:2", "token-only", "stateless", max_new, bonus=True)
    cost = study.study_costs("consistent")
    rep, edge = rp.replay(pol), rp.replay(drafter_only(max_new))
    ok = rep.covered & edge.covered
    th = cost_vector(cost, Network(rtt_s=0.1, up_Bps=2e6 / 8))
    h, e = latency(rep.total[ok], th).mean(), latency(edge.total[ok], th).mean()
    assert (r["hybrid_s"], r["edge_only_s"], r["ratio"]) == pytest.approx((h, e, h / e), rel=1e-12)
    assert r["call_s"] * r["cloud_calls"] + (r["hybrid_s"] - r["call_s"] * r["cloud_calls"]) == pytest.approx(h)


def test_figure_and_report_section(work, monkeypatch):
    import base64

    res = work[0]
    seen = {}

    def fake_run(trace_path, work_dir, utterances):  # the hook's wiring; the work itself is the fixture's
        seen.update(trace=trace_path, work=work_dir, n=utterances)
        return res

    monkeypatch.setattr(study, "run", fake_run)
    title, body = study.study_section()
    assert seen["trace"] is None and seen["work"] is not None and seen["n"] == 12
    assert title == "The study's Table 2, explained"
    assert body.count("<table>") == 2 and 'src="data:image/png;base64,' in body
    assert f"{res.answer['point']['ratio']:.2f}x" in body
    png = base64.b64decode(body.split('src="data:image/png;base64,')[1].split('"')[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


# --- the command and the docs ---------------------------------------------------------------------------------


def test_cli_writes_everything_and_refuses_what_it_should(tmp_path):
    out = tmp_path / "s"
    r = CliRunner().invoke(main, ["study", "--out", str(out), "--utterances", "2"])
    assert r.exit_code == 0, r.output
    for name in ("table2.csv", "definitions.csv", "grid.parquet", "answer.json", "numbers.md", "figures/study.png",
                 "study-trace/manifest.json"):
        assert (out / name).exists(), name
    res = study.run(out / "study-trace", None)  # the trace it built, mapped again: the same numbers
    assert (out / "numbers.md").read_text() == study.numbers_markdown(res)
    assert pl.read_parquet(out / "grid.parquet").equals(res.grid)
    assert f"x{res.answer['point']['ratio']:.2f}" in r.output
    again = CliRunner().invoke(main, ["study", "--out", str(out), "--utterances", "2"])
    assert again.exit_code == 2 and "--force" in again.output
    # a trace that does not explore the study's policies: one sentence, exit 2
    from sectrace.trace import sample_trace_path

    bad = CliRunner().invoke(main, ["study", "--trace", str(sample_trace_path()), "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "sectrace study" in bad.output


def test_docs_quote_what_the_command_computes(work):
    """docs/study.md's numbers block is numbers.md of `sectrace study --out study/` (12 utterances, seed 0)."""
    res = work[0]
    text = (ROOT / "docs" / "study.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- study-numbers -->\n(.*?)<!-- /study-numbers -->", text, re.S)
    assert m, "docs/study.md has no study-numbers block"
    assert m.group(1) == study.numbers_markdown(res), "docs/study.md drifted: rerun `sectrace study --out study/`"


def test_a_study_trace_is_reused_only_when_it_fits(tmp_path):
    study.make_study_trace(tmp_path / "study-trace", utterances=2, ks=(5,), gates=("always",))
    assert study._study_trace_matches(tmp_path / "study-trace", 2, (5,), ("always",))
    assert not study._study_trace_matches(tmp_path / "study-trace", 3, (5,), ("always",))
    assert not study._study_trace_matches(tmp_path / "study-trace", 2, (3, 5), ("always",))
    res = study.run(None, tmp_path, utterances=3, ks=(5,), gates=("always",), rtts=(0.01,), uplinks=(20e6 / 8,))
    assert load_trace(res.trace_path).utterances.height == 3  # rebuilt for the new settings


def test_report_study_flag_adds_the_section(tmp_path):
    """`sectrace report --study` puts the study's Table 2 and the puzzle into the report."""
    from click.testing import CliRunner

    from sectrace.cli import main

    res = tmp_path / "r.parquet"
    assert CliRunner().invoke(main, ["simulate", "--out", str(res)]).exit_code == 0
    r = CliRunner().invoke(main, ["report", str(res), "--out", str(tmp_path / "rep"), "--no-quality", "--study"])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Table 2, explained" in html and "43.8" in html and "34.8" in html  # the study's hybrid and edge totals
