"""`sweep --backend dask` gives the local backend's rows, bit for bit and in order, on a real two-process cluster;
its mistakes (a scheduler without the backend, an unreachable scheduler, no dask) are one sentence each."""

from __future__ import annotations

import socket
import time

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import synthetic_trace

from sectrace.cli import main
from sectrace.gates import parse_gate
from sectrace.network import Network
from sectrace.protocol import Accept, Policy, cloud_only, drafter_only
import sectrace.simulate.sweep as sweep
from sectrace.simulate import CostModel, Replayer
from sectrace.simulate.provenance import provenance_columns
from sectrace.simulate.sweep import product_axes, run_sweep
from sectrace.trace import load_trace, sample_trace_path

NETS = [Network(rtt_s=0.01, name="a"), Network(rtt_s=0.2, up_Bps=1e5, down_Bps=3e5, overhead_bytes=40, name="b",
                                                jitter="expon(scale=0.003)", loss=0.02)]
POLICIES = [drafter_only(64), cloud_only(64)] + [
    Policy(k=k, gate=parse_gate(g), gate_spec=g, accept=Accept.parse(a), privacy=p, max_new_tokens=64)
    for k, g, a, p in ((3, "entropy:2.5", "rank:20", "token-only"), (8, "always", "prob:0.1", "features"))]
GRID = """[policy]
k = [2, 5]
gate = ["always", "entropy:2.5"]
[network]
preset = ["wifi", "4g"]
rtt = ["20ms", "200ms"]
[device]
edge_speedup = [1, 4]
"""


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, one thread each: tasks really cross process boundaries (pickling, per-process
    state), which threads in this process would not show. Starting it takes ~3 s on two shared cores."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as c:
        yield c


@pytest.fixture
def client(cluster):
    from sectrace.simulate.dask_sweep import connect

    with connect(cluster.scheduler_address) as c:
        yield c


def test_config_blocks_cover_the_grid_in_order():
    assert sweep.config_blocks(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert sweep.config_blocks(3, 1024) == [(0, 3)]


def test_blocked_pricing_equals_one_block(monkeypatch):
    """Cutting the configurations into blocks moves values by rounding only (BLAS picks its kernels by shape)."""
    rp = Replayer(synthetic_trace())
    ax = product_axes(NETS, [0.5, 1.0, 3.0], [1.0, 2.0])
    whole = run_sweep(rp, POLICIES, CostModel(), ax, provenance={})
    monkeypatch.setattr(sweep, "CONFIG_BLOCK", 5)
    blocked = run_sweep(rp, POLICIES, CostModel(), ax, provenance={})
    assert blocked.columns == whole.columns and blocked["config"].to_list() == whole["config"].to_list()
    for c in ("latency_s", "latency_s_lo", "ttft_s", "speedup_vs_edge_hi", "t_uplink_s", "rtt_s"):
        np.testing.assert_allclose(blocked[c].to_numpy(), whole[c].to_numpy(), rtol=1e-12, atol=0)


def test_dask_sweep_equals_the_local_sweep(client, monkeypatch):
    """Synthetic trace, 4 policies × 12 configurations in blocks of 5: 12 tasks over two processes."""
    from distributed import get_task_stream

    from sectrace.simulate.dask_sweep import run_sweep_dask

    monkeypatch.setattr(sweep, "CONFIG_BLOCK", 5)  # read on this side: the blocks are cut before submitting
    tr = synthetic_trace()
    ax = product_axes(NETS, [0.5, 1.0, 3.0], [1.0, 2.0])
    prov = provenance_columns(tr)
    local = run_sweep(Replayer(tr), POLICIES, CostModel(), ax, provenance=prov)
    ticks = []
    with get_task_stream(client) as ts:
        dist = run_sweep_dask(client, tr, POLICIES, CostModel(), ax, progress=ticks.append, provenance=prov)
    assert dist.columns == local.columns and dist.schema == local.schema
    assert dist.equals(local)  # every value, intervals included, and the row order
    assert local["latency_s_lo"].is_not_nan().all() and local.height == len(POLICIES) * 12
    assert ticks == [1] * len(POLICIES)
    workers = {t["worker"] for t in ts.data if str(t["key"]).startswith("sectrace-sweep-")}
    assert len(workers) == 2, workers


def _cli_sweep(tmp_path, name, *extra):
    (tmp_path / "grid.toml").write_text(GRID)
    out = tmp_path / f"{name}.parquet"
    r = CliRunner().invoke(main, ["sweep", str(tmp_path / "grid.toml"), "--trace", str(sample_trace_path()),
                                  "--out", str(out), *extra])
    assert r.exit_code == 0, r.output
    return pl.read_parquet(out), r.output


def test_cli_dask_backend_equals_local_on_the_bundled_trace(cluster, tmp_path):
    local, _ = _cli_sweep(tmp_path, "local")
    dist, printed = _cli_sweep(tmp_path, "dask", "--backend", "dask", "--scheduler", cluster.scheduler_address)
    assert "6 policies × 8 configurations = 48 rows" in printed
    assert dist.columns == local.columns
    # the rows say how they were made: only the command differs
    assert dist["command"][0].endswith(f"--backend dask --scheduler {cluster.scheduler_address}")
    assert dist.drop("command").equals(local.drop("command"))
    assert local["trace_sha256"][0] == provenance_columns(load_trace(sample_trace_path()))["trace_sha256"]


def _one_sentence(r):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


def _sweep_args(tmp_path, *extra):
    (tmp_path / "grid.toml").write_text(GRID)
    return ["sweep", str(tmp_path / "grid.toml"), "--out", str(tmp_path / "s.parquet"), *extra]


def test_scheduler_needs_the_dask_backend(tmp_path):
    line = _one_sentence(CliRunner().invoke(main, _sweep_args(tmp_path, "--scheduler", "tcp://127.0.0.1:8786")))
    assert "add --backend dask" in line
    line = _one_sentence(CliRunner().invoke(main, _sweep_args(tmp_path, "--backend", "dask")))
    assert "needs --scheduler" in line
    assert not (tmp_path / "s.parquet").exists()


def test_an_unreachable_scheduler_is_one_sentence_within_seconds(tmp_path):
    pytest.importorskip("distributed")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    line = _one_sentence(CliRunner().invoke(main, _sweep_args(tmp_path, "--backend", "dask", "--scheduler",
                                                              f"tcp://127.0.0.1:{port}")))
    assert time.monotonic() - t0 < 15
    assert f"no dask scheduler answered at tcp://127.0.0.1:{port} within 5 s" in line
    line = _one_sentence(CliRunner().invoke(main, _sweep_args(tmp_path, "--backend", "dask", "--scheduler", "x")))
    assert "is not a scheduler address" in line


def test_dask_backend_without_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "distributed" else real(name, *a))
    line = _one_sentence(CliRunner().invoke(main, _sweep_args(tmp_path, "--backend", "dask", "--scheduler",
                                                              "tcp://127.0.0.1:8786")))
    assert "pip install 'sectrace[dask]'" in line
