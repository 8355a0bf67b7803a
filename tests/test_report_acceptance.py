"""The report's acceptance figures: their data are the results' own columns.

A `simulate` run on the bundled trace with --k 1,3,5 writes per-utterance rows and (--summary-out) the
summary; the figures' data, built from the rows, must equal the summary's columns point for point
(per-position rates, mean acceptance length, latency, speedups and their intervals), and the
accepted-length histogram must equal a count of the protocol's own verify calls.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from sectrace.cli import main
from sectrace.protocol import Verify
from sectrace.reports.acceptance import accepted_histogram, acceptance_data, by_position, versus_k
from sectrace.reports.inputs import normalise_configs
from sectrace.simulate import Replayer
from sectrace.simulate.results import policy_from_row
from sectrace.trace import load_trace, sample_trace_path

GATES = ("entropy:2.5", "always", "margin:0.2")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("acc")
    args = ["simulate", str(sample_trace_path()), *[x for g in GATES for x in ("--gate", g)], "--k", "1,3,5",
            "--rtt", "20ms,100ms", "--out", str(d / "r.parquet"), "--summary-out", str(d / "s.parquet")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    res = normalise_configs(pl.read_parquet(d / "r.parquet"))
    return d, res, pl.read_parquet(d / "s.parquet"), acceptance_data(res)


def test_by_position_is_the_results_acceptance_rate_per_pos(run):
    _, _, summ, (pos, _, _, note) = run
    assert note == ""
    want = summ.filter(pl.col("acceptance_rate_per_pos").is_not_null() & (pl.col("config") == 0)
                       & ~pl.col("policy").is_in(["edge-only", "cloud-only"]))
    assert sorted(pos["policy"].unique().to_list()) == sorted(want["policy"].to_list())
    assert set(pos["k"].to_list()) == {1, 3, 5}
    for r in want.iter_rows(named=True):
        got = pos.filter(pl.col("policy") == r["policy"]).sort("position")
        assert got["position"].to_list() == list(range(1, r["k"] + 1))
        np.testing.assert_array_equal(got["rate"].to_numpy(), np.array(r["acceptance_rate_per_pos"]))
        assert (np.diff(got["rate"].to_numpy()) <= 1e-12).all()  # acceptance is a prefix: never rises


def test_histogram_counts_the_protocols_verify_calls(run):
    _, res, summ, (_, hist, _, _) = run
    tr = load_trace(sample_trace_path())
    rp = Replayer(tr)
    first = res.filter(pl.col("config") == 0)
    pols = first.unique(subset=["policy"], maintain_order=True)
    checked = 0
    for row in pols.iter_rows(named=True):
        if row["policy"] in ("edge-only", "cloud-only"):
            assert hist.filter(pl.col("policy") == row["policy"]).height == 0
            continue
        rep = rp.replay(policy_from_row(row))
        counted = Counter(ev.accepted for r in rep.runs if r is not None for ev in r.events if type(ev) is Verify)
        got = hist.filter(pl.col("policy") == row["policy"]).sort("accepted")
        if not counted:
            assert got.height == 0
            continue
        assert got["accepted"].to_list() == list(range(row["k"] + 1))
        assert dict(zip(got["accepted"], got["calls"])) == {j: counted.get(j, 0) for j in range(row["k"] + 1)}
        assert got["share"].sum() == pytest.approx(1.0)
        mal = summ.filter((pl.col("policy") == row["policy"]) & (pl.col("config") == 0))["mean_acceptance_length"][0]
        assert 1 + (got["accepted"] * got["share"]).sum() == pytest.approx(mal, rel=1e-12)
        checked += 1
    assert checked >= 6


def test_versus_k_points_and_whiskers_are_the_summary_columns(run):
    _, _, summ, (_, _, vk, _) = run
    assert vk.height and set(vk["k"].to_list()) == {1, 3, 5}
    fams = vk["family"].unique(maintain_order=True).to_list()
    assert fams == [f"gate={g} accept=rank:20" for g in GATES]  # only gate varies; bonus, privacy, cache do not
    assert vk.select("family", "config").is_duplicated().sum() == vk.height  # every family at several k
    cols = [c for m in ("mean_acceptance_length", "latency_s", "speedup_vs_edge", "speedup_vs_cloud",
                        "draft_acceptance_rate") for c in (m, f"{m}_lo", f"{m}_hi")]
    assert set(cols) <= set(vk.columns)
    joined = vk.join(summ, on=["policy", "config"], how="left", suffix="_summary")
    assert joined.height == vk.height == summ.filter(~pl.col("policy").is_in(["edge-only", "cloud-only"])).height
    for c in cols:  # equal to the last bits of a float sum (the CLI summarises every configuration in one pass)
        np.testing.assert_allclose(joined[c].to_numpy(), joined[f"{c}_summary"].to_numpy(), rtol=1e-12, atol=0,
                                   err_msg=c)
    assert joined["speedup_vs_edge_lo"].is_not_nan().sum() > 0


def test_one_k_draws_nothing_against_k(tmp_path):
    out = tmp_path / "r.parquet"
    r = CliRunner().invoke(main, ["simulate", str(sample_trace_path()), "--gate", "always", "--gate", "entropy:2.5",
                                  "--k", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = normalise_configs(pl.read_parquet(out))
    pos, hist, vk, note = acceptance_data(res)
    assert pos.height == 2 * 3 and hist.height == 2 * 4 and vk.height == 0 and note == ""
    assert versus_k(res.clear()).height == 0 and by_position(res.clear()).height == 0
    assert accepted_histogram(res.filter(pl.col("policy") == "edge-only")).height == 0


def test_report_has_the_acceptance_section(run):
    d, _, _, _ = run
    r = CliRunner().invoke(main, ["report", str(d / "r.parquet"), "--no-quality", "--out", str(d / "rep")])
    assert r.exit_code == 0, r.output
    html = (d / "rep" / "report.html").read_text()
    assert 'id="acceptance"' in html and 'href="#acceptance"' in html
    for name in ("acceptance_by_position", "accepted_length_histogram", "acceptance_vs_k"):
        assert (d / "rep" / "figures" / f"{name}.png").stat().st_size > 1000
        assert (d / "rep" / "figures" / f"{name}.svg").exists()
        assert (d / "rep" / "tables" / f"{name}.csv").exists()
    svg = (d / "rep" / "figures" / "acceptance_vs_k.svg").read_text()
    assert len(set(re.findall(r'id="speedup_vs_edge-c0-f(\d+)', svg))) == len(GATES)  # one line per family
