"""`sectrace report`: Pareto fronts, study-shaped tables, a self-contained HTML report and its figures."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import synthetic_sample as sample_trace_path
from conftest import synthetic_trace

from sectrace.cli import main
from sectrace.reports.pareto import pareto_mask
from sectrace.reports.tables import policy_points, table1, table2

pytest.importorskip("matplotlib")
SAMPLE = str(sample_trace_path())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("rep")
    out = d / "r.parquet"
    r = CliRunner().invoke(main, ["simulate", "--trace", SAMPLE, "--gate", "entropy:2.5", "--gate", "always", "--gate", "random:0.5", "--k", "3,5",
                                  "--rtt", "20ms,100ms", "--out", str(out)])
    assert r.exit_code == 0, r.output
    tok = d / "t.parquet"
    r = CliRunner().invoke(main, ["simulate", "--trace", SAMPLE, "--gate", "entropy:2.5", "--k", "3", "--privacy", "token-only",
                                  "--out", str(tok)])
    assert r.exit_code == 0, r.output
    both = pl.concat([pl.read_parquet(out), pl.read_parquet(tok).filter(
        ~pl.col("policy").is_in(["edge-only", "cloud-only"]))], how="diagonal_relaxed")
    both.write_parquet(d / "both.parquet")
    return d / "both.parquet"


def test_pareto_mask():
    pts = np.array([[1.0, 10.0], [2.0, 10.0], [2.0, 5.0], [0.5, 1.0], [np.nan, 0.0], [2.0, 5.0]])
    # higher first axis better, lower second axis better
    m = pareto_mask(pts, np.array([+1, -1]))
    assert m.tolist() == [False, False, True, True, False, True]  # ties are not dominated


def test_tables_from_results(results):
    res = pl.read_parquet(results)
    pts = policy_points(res)
    assert pts.height == res.select("policy", "config").unique().height
    e = pts.filter((pl.col("policy") == "edge-only") & (pl.col("config") == 0)).row(0, named=True)
    assert e["cloud_tokens"] == 0 and e["bytes_up"] == 0
    assert e["oet_s"] == pytest.approx(e["latency_s"] - e["ttft_s"])
    t2 = table2(pts, 0)
    assert "study: Speculative decoding" in t2["system"].to_list()
    assert t2.filter(pl.col("system") == "study: Speculative decoding")["total (s)"][0] == 43.87
    t1 = table1(None)
    assert t1.filter(pl.col("system") == "study: Edge (Qwen-2.5-Omni-3B)")["BLEU-1"][0] == 7.72


def _check_self_contained(html: str):
    assert "data:image/png;base64," in html
    # nothing fetched from anywhere: no src other than data URIs, links only within the page or to the
    # interactive view beside it, no scripts other than inert JSON
    assert not re.search(r"""src\s*=\s*["'](?!data:)""", html)
    assert set(re.findall(r"""href\s*=\s*["']([^"'#][^"']*)""", html)) == {"interactive.html"}
    assert not re.search(r"<script(?![^>]*application/json)", html)
    assert "http://" not in html.replace("http-equiv", "") and "https://" not in html


def test_report_without_trace(results, tmp_path):
    # Results whose recorded trace is gone: the report still works, on the results alone.
    orphan = tmp_path / "orphan.parquet"
    pl.read_parquet(results).with_columns(pl.lit("/nonexistent/trace").alias("trace_path")).write_parquet(orphan)
    r = CliRunner().invoke(main, ["report", str(orphan), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "rep" / "report.html").read_text()
    _check_self_contained(html)
    assert "similarity to the cloud-only caption" in html and "pass --trace" in html
    for name in ("pareto_latency", "pareto_costs", "latency_cdf", "privacy"):
        for ext in ("png", "svg", "pdf"):
            assert (tmp_path / "rep" / "figures" / f"{name}.{ext}").stat().st_size > 1000
    prov = json.loads((tmp_path / "rep" / "provenance.json").read_text())
    assert prov["trace"] == "synthetic" and prov["synthetic"] is True and prov["simulated_with"]
    front = pl.read_csv(tmp_path / "rep" / "tables" / "pareto.csv")
    assert front["on_front"].any() and not front["on_front"].all()  # dominated points are kept


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    parts = []
    for privacy in ("features", "token-only"):
        r = CliRunner().invoke(main, ["simulate", "--trace", SAMPLE, "--gate", "entropy:2.5", "--gate", "always", "--k", "3",
                                      "--rtt", "20ms", "--privacy", privacy, "--out", str(d / f"{privacy}.parquet")])
        assert r.exit_code == 0, r.output
        parts.append(pl.read_parquet(d / f"{privacy}.parquet"))
    pl.concat([parts[0], parts[1].filter(~pl.col("policy").is_in(["edge-only", "cloud-only"]))]) \
        .write_parquet(d / "small.parquet")
    return d / "small.parquet"


@pytest.mark.skipif(shutil.which("java") is None, reason="Java is not installed (needed by the PTB tokenizer)")
def test_report_with_trace(small, tmp_path):
    results = small
    out = tmp_path / "rep"
    r = CliRunner().invoke(main, ["report", str(results), "--trace", SAMPLE, "--out", str(out)])
    assert r.exit_code == 0, r.output
    html = (out / "report.html").read_text()
    _check_self_contained(html)
    assert "CIDEr-D ×100 (vs references)" in html and "SPICE: unavailable" in html
    assert (out / "figures" / "overhead_breakdown.png").exists() and (out / "figures" / "break_even.pdf").exists()
    assert "Break-even maps" in html
    bd = pl.read_csv(out / "tables" / "overhead_breakdown.csv")
    res = pl.read_parquet(results).filter((pl.col("config") == 0) & pl.col("covered"))
    mean_lat = res.group_by("policy").agg(pl.col("latency_s").mean())
    j = bd.join(mean_lat, on="policy")
    parts = j.select(pl.exclude("policy", "latency_s")).to_numpy().sum(axis=1)
    assert np.allclose(parts, j["latency_s"].to_numpy())  # the breakdown adds up to the simulated latency
    q = pl.read_csv(out / "tables" / "quality_per_policy.csv")
    assert {"bleu1", "bleu4", "meteor", "rouge_l", "cider_d", "emotion_consistency"} <= set(q.columns)
    # CIDEr-D on one scale (×100 of pycocoevalcap's 0–10) in the Pareto axis, pareto.csv and Table 1
    assert 0 <= q["cider_d"].min() and q["cider_d"].max() <= 10 and q["cider_d"].max() > 0
    front = pl.read_csv(out / "tables" / "pareto.csv").join(q.select("policy", "cider_d"), on="policy")
    assert np.allclose(front["quality"], 100 * front["cider_d"]) and np.allclose(front["cider_d_x100"],
                                                                                   front["quality"])
    t1 = pl.read_csv(out / "tables" / "table1_quality.csv").join(
        q.select(pl.col("policy").alias("system"), "cider_d"), on="system")
    assert t1.height == q.height and np.allclose(t1["CIDEr-D"], 100 * t1["cider_d"])
    assert "CIDEr-D ×100" in html
    priv = pl.read_csv(out / "tables" / "privacy.csv")
    tok = priv.filter(pl.col("privacy") == "token-only").filter(pl.col("policy") != "edge-only")
    assert (tok["audio_bytes_up"] == 0).all() and (tok["caption_share_seen"] > 0).all()


def test_report_bad_input(tmp_path):
    r = CliRunner().invoke(main, ["report", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "error: no results at" in r.output
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "x.parquet")
    r = CliRunner().invoke(main, ["report", str(tmp_path / "x.parquet"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "lacks the column" in r.output
    (tmp_path / "y.parquet").write_text("not parquet")
    r = CliRunner().invoke(main, ["report", str(tmp_path / "y.parquet"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not a readable Parquet" in r.output


def test_break_even_matches_simulated_latency(results):
    from sectrace.reports.breakdown import break_even
    from sectrace.reports.inputs import normalise_configs

    res = normalise_configs(pl.read_parquet(results))
    tr = synthetic_trace()
    pol = "k=3 gate=entropy:2.5 accept=rank:20 features"
    c0 = res.filter(pl.col("config") == 0)
    rtt = c0["rtt_s"][0]
    (rtts, speeds, ratios, rtt0), note = break_even(tr, res, [pol], rtts=[rtt], speeds=[1.0])
    assert rtt0 == rtt and "edge-only" in note
    both = c0.filter(pl.col("policy").is_in([pol, "edge-only"])).pivot(on="policy", index="utt_id",
                                                                         values="latency_s").drop_nulls()
    want = both[pol].mean() / both["edge-only"].mean()
    assert ratios[pol][0, 0] == pytest.approx(want, rel=1e-9)
    # a faster edge favours drafting alone: the ratio grows with the edge speed-up
    (_, _, r2, _), _ = break_even(tr, res, [pol], rtts=[rtt], speeds=[1.0, 8.0])
    assert r2[pol][1, 0] > r2[pol][0, 0]


def test_report_finds_the_trace_the_results_name(results, tmp_path):
    r = CliRunner().invoke(main, ["report", str(results), "--no-quality", "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "pass --trace" not in (tmp_path / "rep" / "report.html").read_text()


def test_report_with_validation(results, tmp_path):
    # The committed real validation run (docs/validation) as a section: its verdict, noise floor and table.
    from pathlib import Path

    val = Path(__file__).parents[1] / "docs" / "validation" / "val.parquet"
    r = CliRunner().invoke(main, ["report", str(results), "--no-quality", "--validation", str(val),
                                  "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Simulator vs live runs" in html and "Median absolute error on total latency" in html
    assert "own noise" in html and "72/72" in html
    table = pl.read_csv(tmp_path / "rep" / "tables" / "validation.csv")
    assert table.height == 12 and {"median_ape_latency", "bias_latency"} <= set(table.columns)
    assert (tmp_path / "rep" / "figures" / "validation.png").stat().st_size > 1000
