"""The simulator's commands end to end (sample trace)."""

import polars as pl
from click.testing import CliRunner

from sectrace.cli import main


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_simulate_with_presets():
    r = _run("simulate", "--network", "4g", "--edge-device", "study-cpu-2core", "--cloud-device", "h100-sxm",
             "--json")
    assert r.exit_code == 0, r.output
    assert '"latency_overlap_s"' in r.output
    r = _run("simulate", "--breakdown", "--no-bonus", "--rtt", "20ms,200ms")
    assert r.exit_code == 0 and "where the time goes" in r.output and "RTT 200 ms" in r.output
    bad = _run("simulate", "--network", "dialup")
    assert bad.exit_code == 2 and "unknown network" in bad.output


def test_sweep_writes_parquet(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text('[policy]\nk = [3]\ngate = ["always"]\n[network]\nrtt = ["10ms", "100ms"]\n'
                    '[device]\nedge_speedup = [1, 4]\n')
    out = tmp_path / "s.parquet"
    r = _run("sweep", str(grid), "--out", str(out))
    assert r.exit_code == 0, r.output
    df = pl.read_parquet(out)
    assert df.height == 3 * 4  # (edge-only, cloud-only, one hybrid) × 4 configurations
    for col in ("num_drafts", "num_draft_tokens", "num_accepted_tokens", "draft_acceptance_rate",
                "mean_acceptance_length", "system_efficiency", "acceptance_rate_per_pos", "cloud_written_share",
                "latency_p50_s", "latency_p95_s", "cloud_calls", "bytes_up", "t_resync_s", "latency_overlap_s",
                "latency_s_lo", "latency_s_hi", "speedup_vs_edge_lo", "cost_verify_a", "trace_sha256", "command"):
        assert col in df.columns
    grid.write_text("[policy]\nk = [-1]\n")
    assert _run("sweep", str(grid), "--out", str(out)).exit_code == 2


def test_breakeven_and_fleet(tmp_path):
    out = tmp_path / "m.parquet"
    r = _run("breakeven", "--edge-tps", "1,64", "--rtt", "10ms,1s", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert pl.read_parquet(out).height == 4
    assert _run("breakeven", "--edge-tps", "0").exit_code == 2
    r = _run("fleet", "--devices", "5", "--servers", "2", "--network", "wifi", "--utterances-per-device", "3")
    assert r.exit_code == 0, r.output
    assert "escalations" in r.output and "queue" in r.output
    assert _run("fleet", "--devices", "0").exit_code == 2
