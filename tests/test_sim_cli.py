"""The simulator's commands end to end (sample trace)."""

import polars as pl
import pytest
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


def test_fleet_throughput_latency_table_json_and_rows(tmp_path):
    import json

    from sectrace.simulate.results import from_row

    out = tmp_path / "f.parquet"
    r = _run("fleet", "--devices", "8", "--arrival-rate", "0.02,0.5", "--utterances-per-device", "6", "--out", str(out))
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[1].split()[:3] == ["rate/dev", "offered", "captions/s"]
    low, high = lines[2].split(), lines[3].split()
    assert (low[0], high[0]) == ("0.02", "0.5")
    # light load: throughput close to what is offered; heavy load: the fleet saturates and responses grow
    assert float(low[2]) == pytest.approx(0.02 * 8, rel=0.5) and float(high[2]) < 0.5 * 8
    assert float(high[4]) > float(low[4])  # response p50, seconds
    df = pl.read_parquet(out)
    assert df.height == 2 * 8 * 6 and sorted(df["arrival_rate"].unique().to_list()) == [0.02, 0.5]
    assert {"seed", "devices", "servers", "cost_verify_a", "rto_s", "trace_sha256", "command", "k", "gate",
            "cloud_tokens"} <= set(df.columns)
    setup = from_row(df.row(0, named=True))
    assert setup.policy.label == df["policy"][0] and setup.network.rtt_s == df["rtt_s"][0]
    j = json.loads(_run("fleet", "--devices", "4", "--utterances-per-device", "3", "--json").stdout)
    run = j["runs"][0]
    assert run["latency_p50_s"] <= run["latency_p95_s"] <= run["latency_p99_s"]
    assert set(run) - {"policy", "k", "gate", "rtt_s", "arrival_rate"} <= set(j["definitions"])  # the rest: metrics
    assert _run("fleet", "--arrival-rate", "0.1,-1").exit_code == 2
