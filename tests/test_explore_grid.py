"""`--explore GRID`: a trace explored with a sweep grid's policies replays that sweep with no coverage miss.

Synthetic traces (`trace synth --explore`) and tiny-model collections (`collect --explore`, `--extend`). The
check is the sweep's own `covered` column against the trace's utterance count, and the coverage note: a
trace made without the grid misses (so the test can fail), the one made with it does not, and the note on the
first points at `--explore GRID`.
"""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner

from sectrace.cli import main

GRID = """\
[policy]
k = [2, 4]
gate = ["always", "entropy:0.5"]
accept = ["top1", "rank:3"]
privacy = ["features", "token-only"]

[network]
rtt = ["20ms", "80ms"]

[device]
edge = "study-cpu-2core"
cloud = "study-a100"
"""


def _sweep(runner, grid, trace, out):
    res = runner.invoke(main, ["sweep", str(grid), "--trace", str(trace), "--no-ci", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return pl.read_parquet(out), res.output


def test_synth_explored_with_the_grid_covers_its_sweep(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    runner = CliRunner()
    for name, extra in (("plain", []), ("grid", ["--explore", str(grid)])):
        res = runner.invoke(main, ["trace", "synth", str(tmp_path / name), "--utterances", "6", "--seed", "3",
                                   "--max-new-tokens", "24", *extra])
        assert res.exit_code == 0, res.output
    plain, note = _sweep(runner, grid, tmp_path / "plain", tmp_path / "plain.parquet")
    assert (plain["covered"] < 6).any(), "k=2 and k=4 are not in the default exploration: the plain trace misses"
    assert f"--explore {grid}" in note
    full, note = _sweep(runner, grid, tmp_path / "grid", tmp_path / "grid.parquet")
    assert full.height == 2 * (2 * 2 * 2 * 2 + 2)  # two RTTs x (16 policies + 2 baselines)
    assert (full["covered"] == 6).all() and "miss" not in note
    m = json.loads((tmp_path / "grid" / "manifest.json").read_text())
    explored = m["exploration"]["policies"]
    assert len(explored) == len(set(explored)), "each policy is explored once"
    assert "k=4 gate=entropy:0.5 accept=rank:3 token-only" in explored


def test_explore_needs_a_grid_file_that_exists(tmp_path):
    res = CliRunner().invoke(main, ["trace", "synth", str(tmp_path / "t"), "--explore", str(tmp_path / "no.toml")])
    assert res.exit_code == 2 and "no.toml" in res.output and not (tmp_path / "t").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text("[policy]\nk = [0.5]\n")
    res = CliRunner().invoke(main, ["trace", "synth", str(tmp_path / "t"), "--explore", str(bad)])
    assert res.exit_code == 2 and "Traceback" not in res.output and not (tmp_path / "t").exists()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_models import make_pair

    root = tmp_path_factory.mktemp("explore")
    _, d, v = make_pair(root)
    rows = [{"utt_id": f"u{i}", "references": ["ref"], "emotion": "sad", "text": t}
            for i, t in enumerate(["leave me alone", "that is wonderful news"])]
    manifest = root / "data.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root, manifest, d, v


def test_collect_extended_with_the_grid_covers_its_sweep(tiny, tmp_path):
    root, manifest, d, v = tiny
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID.replace('["features", "token-only"]', '["token-only"]'))
    runner = CliRunner()
    common = ["--backend", "causal-lm", "--drafter", str(d), "--verifier", str(v), "--max-new-tokens", "6",
              "--edge-threads", "1", "--no-probes"]
    res = runner.invoke(main, ["collect", str(manifest), *common, "--policy", "k=1 gate=never", "--out",
                               str(tmp_path / "base")])
    assert res.exit_code == 0, res.output
    base, note = _sweep(runner, grid, tmp_path / "base", tmp_path / "base.parquet")
    assert (base["covered"] < 2).any() and f"--explore {grid}" in note and "--extend" in note
    res = runner.invoke(main, ["collect", str(manifest), *common, "--extend", str(tmp_path / "base"),
                               "--explore", str(grid), "--out", str(tmp_path / "ext")])
    assert res.exit_code == 0, res.output
    ext, note = _sweep(runner, grid, tmp_path / "ext", tmp_path / "ext.parquet")
    assert (ext["covered"] == 2).all() and "miss" not in note
