"""`sectrace report` on `sectrace sweep` summaries: fronts per configuration, quality = agreement with cloud-only.

The agreement a sweep report replays from the trace must equal the per-utterance agreement `simulate`
computes for the same policies (an independent path: simulate's own replay and similarity columns),
and the front flags must be what a brute-force dominance check over the four (or, with no quality,
three) axes gives.
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import synthetic_sample

from sectrace.cli import main
from sectrace.trace import sample_trace_path

pytest.importorskip("matplotlib")
GRID = """
[policy]
k = [1, 3]
gate = ["always", "entropy:2.5"]
[network]
rtt = ["20ms", "200ms"]
[device]
edge_speedup = [1, 4]
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    (d / "grid.toml").write_text(GRID)
    r = CliRunner().invoke(main, ["sweep", str(d / "grid.toml"), "--trace", str(sample_trace_path()),
                                  "--out", str(d / "s.parquet")])
    assert r.exit_code == 0, r.output
    return d / "s.parquet"


def _dominated(rows: list[tuple], better: tuple) -> list[bool]:
    """Brute force: a row is dominated when another is at least as good everywhere and better somewhere."""
    out = []
    for a in rows:
        if any(not np.isfinite(v) for v in a):
            out.append(True)
            continue
        out.append(any(all(np.isfinite(v) for v in b)
                       and all((bv - av) * s >= 0 for av, bv, s in zip(a, b, better))
                       and any((bv - av) * s > 0 for av, bv, s in zip(a, b, better)) for b in rows))
    return out


def _check_front(front: pl.DataFrame, cols: list[str], better: tuple):
    for (_,), g in front.group_by(["config"]):
        rows = [tuple(float("nan") if v is None else float(v) for v in r) for r in g.select(cols).iter_rows()]
        assert g["on_front"].to_list() == [not d for d in _dominated(rows, better)]


def test_sweep_report_with_trace(sweep, tmp_path):
    out = tmp_path / "rep"
    r = CliRunner().invoke(main, ["report", str(sweep), "--trace", str(sample_trace_path()), "--out", str(out)])
    assert r.exit_code == 0, r.output
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "sweep summary" in html and "similarity to the cloud-only caption" in html
    assert "A sweep summary holds no captions" in html  # Table 1 says why it has no reference metrics
    front = pl.read_csv(out / "tables" / "pareto.csv")
    summary = pl.read_parquet(sweep)
    assert front.height == summary.height and front["config"].n_unique() == 4
    # quality = mean similarity to cloud-only over covered utterances, as simulate computes it per utterance
    r = CliRunner().invoke(main, ["simulate", "--gate", "always", "--gate", "entropy:2.5", "--k", "1,3",
                                  "--out", str(tmp_path / "sim.parquet")])
    assert r.exit_code == 0, r.output
    sim = pl.read_parquet(tmp_path / "sim.parquet").filter(pl.col("covered") & (pl.col("config") == 0)) \
        .group_by("policy").agg(pl.col("similarity_cloud").mean().alias("want"),
                                pl.col("exact_match_cloud").mean().alias("want_exact"))
    j = front.join(sim, on="policy")
    assert j.height == front.height
    assert np.allclose(j["quality"], j["want"], atol=1e-12) and np.allclose(j["agree_cloud_exact"], j["want_exact"])
    assert j.filter(pl.col("policy") == "cloud-only")["quality"].to_list() == [1.0] * 4
    _check_front(front, ["quality", "latency_s", "cloud_tokens", "bytes_up"], (+1, -1, -1, -1))
    svg = (out / "figures" / "pareto_latency.svg").read_text(encoding="utf-8")
    for c in range(4):  # 4 configurations ≤ the panel limit: one labelled panel each
        assert f'id="label-c{c}-' in svg
    assert (out / "interactive.html").stat().st_size > 10_000
    assert not re.search(r"https?://", (out / "interactive.html").read_text(encoding="utf-8"))
    # the breakdown comes from the sweep's own per-part means and adds up to its latency
    bd = pl.read_csv(out / "tables" / "overhead_breakdown.csv")
    c0 = summary.filter(pl.col("config") == 0).select("policy", "latency_s").join(bd, on="policy")
    parts = c0.select(pl.exclude("policy", "latency_s")).to_numpy()
    assert np.allclose(np.nansum(parts, axis=1)[c0["latency_s"].is_not_null().to_numpy()],
                       c0["latency_s"].drop_nulls().to_numpy())


def test_sweep_report_without_quality(sweep, tmp_path):
    """No trace and no agreement columns: three-axis fronts, said on the page; the CSV summary reads too."""
    bare = tmp_path / "bare.csv"
    df = pl.read_parquet(sweep)
    df.drop([c for c in df.columns if c in ("trace_path", "similarity_cloud", "exact_match_cloud")]) \
        .drop([c for c, t in df.schema.items() if t.is_nested()]).write_csv(bare)
    r = CliRunner().invoke(main, ["report", str(bare), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    assert "No quality axis" in html
    front = pl.read_csv(tmp_path / "rep" / "tables" / "pareto.csv")
    assert front["quality"].null_count() == front.height
    _check_front(front, ["latency_s", "cloud_tokens", "bytes_up"], (-1, -1, -1))


def test_sweep_report_refuses_another_trace(sweep, tmp_path):
    r = CliRunner().invoke(main, ["report", str(sweep), "--trace", str(synthetic_sample()), "--out",
                                  str(tmp_path / "rep")])
    assert r.exit_code == 2 and "give the trace the sweep ran on" in r.output, r.output


def test_sweep_report_refuses_duplicate_rows(sweep, tmp_path):
    twice = tmp_path / "twice.parquet"
    df = pl.read_parquet(sweep)
    pl.concat([df, df]).write_parquet(twice)
    r = CliRunner().invoke(main, ["report", str(twice), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 2 and "same (policy, config) twice" in r.output, r.output


def test_timeline_refuses_a_sweep_summary(sweep, tmp_path):
    r = CliRunner().invoke(main, ["timeline", str(sweep), "--policy", "edge-only", "--out", str(tmp_path / "t.json")])
    assert r.exit_code == 2 and "sweep summary" in r.output and "simulate --out" in r.output, r.output


def test_break_even_caption_says_what_is_drawn():
    from sectrace.reports.build import break_even_caption

    drawn = {"a": (0.6, 1.4, True), "b": (1.2, 3.0, False), "c": (0.3, 0.9, False)}
    cap = break_even_caption(drawn, {"a": 3, "b": 4, "c": 5}, 0.02)
    assert "black line" in cap and "drawn for policy 3:" in cap
    assert "Policy 4 is slower than edge-only everywhere" in cap and "ratio ≥ 1.20" in cap
    assert "Policy 5 is faster than edge-only everywhere" in cap and "ratio ≤ 0.90" in cap
    assert "(20 ms)" in cap
    none = break_even_caption({"b": (1.2, 3.0, False)}, {"b": 4}, None)
    assert "black line" not in none and "dot" not in none


def test_break_even_figure_draws_the_line_only_where_the_map_crosses_one():
    from sectrace.reports import figures

    rtts, speeds = np.logspace(-3, 0, 5), np.logspace(-1, 1, 4)
    grid = np.outer(speeds, np.ones(5))  # ratio = speed-up: crosses 1
    fig, drawn = figures.break_even(rtts, speeds, {"x": grid, "y": grid + 5}, 0.02, "t")
    assert drawn["x"][2] and not drawn["y"][2]
    contours = [len(ax.collections) for ax in fig.axes[:2]]  # mesh (+ contour set where drawn)
    assert contours[0] > contours[1]
    assert drawn["x"][:2] == (pytest.approx(0.1), pytest.approx(10.0))


def test_breakdown_bars_stack_every_part():
    """Every part column is drawn (known parts and ones new to the report), so each bar ends at the row's total."""
    from sectrace.reports import figures

    parts = pl.DataFrame({"policy": ["a", "b"], "edge_prefill": [1.0, 0.5], "wasted_drafts": [0.25, 0.0],
                          "queueing": [0.5, 0.125], "resync": [0.0, 0.75], "brand_new_part": [2.0, 1.0]})
    fig = figures.breakdown(parts, "t")
    ends = {}
    for bar in fig.axes[0].patches:
        y = round(bar.get_y() + bar.get_height() / 2)
        ends[y] = max(ends.get(y, 0.0), bar.get_x() + bar.get_width())
    assert ends == {0: pytest.approx(3.75), 1: pytest.approx(2.375)}
