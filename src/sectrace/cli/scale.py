"""`sectrace sweep`, `breakeven` and `fleet`: the simulator at scale."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from ..fsio import check_output, write_table
from ._common import (
    FORCE_BIG_OPTION,
    POLICY_OPTIONS,
    command_line,
    load_trace_or_sample,
    one_policy,
    positive_float,
    require_extra,
    split_list,
    to_json,
    with_options,
)


@click.command()
@click.argument("grid", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Summary per (policy, config): .parquet or .csv.")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path),
              help="Trace (default: the grid's, or the sample).")
@click.option("--costs", "cost_mode", type=click.Choice(["fit", "study"]), default="fit", show_default=True,
              help="Base costs when the grid names no device: fitted to the trace, or the study's devices.")
@click.option("--jobs", default=1, show_default=True, help="Parallel worker processes (joblib), split by policy.")
@click.option("--backend", type=click.Choice(["local", "dask"]), default="local", show_default=True,
              help="Where the sweep runs: this machine (--jobs processes) or a dask.distributed cluster (--scheduler).")
@click.option("--scheduler", metavar="ADDRESS",
              help="The dask scheduler for --backend dask, e.g. tcp://HOST:8786 (`dask scheduler` prints it).")
@click.option("--ci/--no-ci", default=True, show_default=True,
              help="Bootstrap 95 % intervals of the means (about 0.5 ms per row); --no-ci for very large grids.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON instead.")
@FORCE_BIG_OPTION
def sweep(grid, out, trace_path, cost_mode, jobs, backend, scheduler, ci, as_json, force):
    """Price the cartesian product of GRID (policies × networks × devices) in one pass per policy.

    \b
    Example grid (docs/simulator.md lists every key):
      [policy]  k = [1, 3, 5, 8]   gate = ["always", "entropy:2.5"]   accept = ["top1", "rank:20"]
      [network] preset = ["wifi", "4g"]   rtt = ["10ms", "50ms", "200ms"]
      [device]  edge = "study-cpu-2core"   edge_speedup = [1, 2, 4, 8]

    \b
    Examples:
      sectrace sweep examples/grid.toml --out sweep.parquet
      sectrace sweep examples/grid.toml --trace my-trace --jobs 2 --out sweep.csv --force
      sectrace sweep examples/grid.toml --backend dask --scheduler tcp://10.0.0.5:8786 --out sweep.parquet
    """
    import time

    from tqdm import tqdm

    from ..simulate import Replayer
    from ..simulate.budget import cap_jobs
    from ..simulate.grid import grid_trace
    from ..simulate.profiles import base_cost
    from ..simulate.provenance import provenance_columns
    from ..simulate.results import coverage_note
    from ..simulate.sweep import load_grid, run_sweep, run_sweep_parallel
    from ..trace import load_trace, sample_trace_path

    check_output(out, force)
    if scheduler and backend != "dask":
        raise UserError("--scheduler is the dask scheduler's address: add --backend dask, or drop --scheduler")
    if backend == "dask":
        if not scheduler:
            raise UserError("--backend dask needs --scheduler ADDRESS, e.g. tcp://HOST:8786 from `dask scheduler`")
        if jobs != 1:
            raise UserError("--jobs counts local processes; with --backend dask the cluster's workers run the sweep: "
                            "drop --jobs")
        require_extra("sweep", "dask")
    trace_path = trace_path or grid_trace(grid) or sample_trace_path()
    tr = load_trace(trace_path)
    max_new = int(tr.manifest["decoding"].get("max_new_tokens", 64))
    jobs = cap_jobs(jobs)
    policies, ax, cost, _ = load_grid(grid, max_new, trace=tr, jobs=jobs, force=force)
    cost = cost or base_cost(tr, cost_mode)
    client = None
    if backend == "dask":
        from ..simulate.dask_sweep import connect

        client = connect(scheduler)
    t0 = time.perf_counter()
    n_utt = tr.utterances.height
    prov = provenance_columns(tr, command_line())
    with tqdm(total=len(policies), desc="sweeping", unit="policy", disable=None, leave=False) as bar:
        if client is not None:
            from ..simulate.dask_sweep import run_sweep_dask

            with client:
                df = run_sweep_dask(client, tr, policies, cost, ax, progress=bar.update, ci=ci, provenance=prov)
        elif jobs == 1:
            df = run_sweep(Replayer(tr), policies, cost, ax, progress=bar.update, ci=ci, provenance=prov)
        else:
            df = run_sweep_parallel(trace_path, policies, cost, ax, jobs, progress=bar.update, ci=ci,
                                    provenance=prov)
    dt = time.perf_counter() - t0
    write_table(df, out)
    note = coverage_note(df, trace_path, tr.synthetic, grid=grid)
    if as_json:
        from ..simulate.metrics import BOOTSTRAP, DEFINITIONS

        click.echo(to_json({"out": str(out), "rows": df.height, "policies": len(policies), "configurations": len(ax),
                            "utterances": n_utt, "seconds": dt, "coverage": note, "provenance": prov,
                            "bootstrap": BOOTSTRAP if ci else None, "definitions": DEFINITIONS,
                            "columns": df.columns}))
        return
    click.echo(f"{len(policies)} policies × {len(ax)} configurations = {df.height} rows → {out} "
               f"({len(policies) * len(ax) * n_utt / dt:,.0f} utterance-replays/s, {dt:.2f} s)")
    if note:
        click.echo(note)


@click.command()
@click.argument("trace_path", metavar="[TRACE]", required=False, type=click.Path(path_type=Path))
@with_options(POLICY_OPTIONS)
@click.option("--edge-tps", "tps", default="0.5,1,2,4,8,16,32,64", show_default=True,
              help="Edge decode speeds (tokens/s) to map.")
@click.option("--rtt", "rtts", default="1ms,10ms,20ms,50ms,100ms,200ms,600ms", show_default=True,
              help="Round-trip times to map.")
@click.option("--network", "network_name", default=None, help="Network preset for bandwidths, jitter, loss.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the map as a table (.parquet or .csv).")
@click.option("--json", "as_json", is_flag=True, help="Print the map as JSON instead.")
@FORCE_BIG_OPTION
def breakeven(trace_path, k, gate, accept, bonus, privacy, cloud_cache, cost_mode, edge_device, cloud_device, tps,
              rtts, network_name, out, as_json, force):
    """Where, in the edge tok/s × RTT plane, the hybrid beats edge-only and cloud-only (mean latency).

    In the printed map: H = hybrid fastest, E = edge-only fastest, C = cloud-only fastest;
    lower case h: the hybrid beats edge-only but not cloud-only.

    \b
    Examples:
      sectrace breakeven --costs study
      sectrace breakeven my-trace --gate margin:0.3 --k 3 --edge-tps 1,2,4,8 --rtt 10ms,50ms,200ms --out map.parquet
    """
    from ..simulate import Network, Replayer, profiles
    from ..simulate.profiles import base_cost
    from ..simulate.sweep import breakeven as run_map
    from ..units import parse_duration

    if out:
        check_output(out, force)
    tr = load_trace_or_sample(trace_path)
    max_new = int(tr.manifest["decoding"].get("max_new_tokens", 64))
    pol = one_policy(k, gate, accept, bonus, privacy, cloud_cache, max_new)
    cost = base_cost(tr, cost_mode, edge_device, cloud_device)
    net = profiles.network_preset(network_name) if network_name else Network()
    tps_list = split_list([tps], "edge speed", positive_float("edge speed", "--edge-tps 2,4,8"))
    if min(tps_list) <= 0:
        raise UserError("--edge-tps values must be positive")
    rtt_list = [parse_duration(r, "--rtt", require_unit=True) for r in split_list([rtts], "RTT", str)]
    m = run_map(Replayer(tr), pol, cost, net, tps_list, rtt_list, force=force)
    if out:
        write_table(m, out)
    if as_json:
        from ..simulate.provenance import provenance_columns

        click.echo(to_json({"provenance": provenance_columns(tr, command_line()), "policy": pol.label,
                            "costs": cost.__dict__, "network": net.__dict__,
                            "mean": "latency means over the covered utterances (no intervals: one map cell per "
                                    "edge speed × RTT)", "map": m.to_dicts(), "out": str(out) if out else None}))
        return
    click.echo(f"policy: {pol.label}   costs: {cost.source}")
    click.echo("edge tok/s \\ RTT " + " ".join(f"{r * 1000:>6.0f}ms" for r in rtt_list))
    for t in tps_list:
        row = m.filter(m["edge_tps"] == t)
        cells = []
        for r in row.iter_rows(named=True):
            best = min(("H", r["hybrid_s"]), ("E", r["edge_only_s"]), ("C", r["cloud_only_s"]), key=lambda x: x[1])[0]
            cells.append("h" if best == "C" and r["beats_edge"] else best)
        click.echo(f"{t:>16g} " + " ".join(f"{c:>8}" for c in cells))
    click.echo("H hybrid fastest · E edge-only fastest · C cloud-only fastest · "
               "h hybrid beats edge-only, cloud-only fastest (mean latency over the covered utterances)")
    if out:
        click.echo(f"map: {out} ({m.height} rows)")


@click.command()
@click.argument("trace_path", metavar="[TRACE]", required=False, type=click.Path(path_type=Path))
@with_options(POLICY_OPTIONS)
@click.option("--devices", default=10, show_default=True, help="Edge devices sharing the cloud.")
@click.option("--servers", default=1, show_default=True, help="Cloud GPU servers.")
@click.option("--max-batch", default=8, show_default=True, help="Verifications a server runs as one batch.")
@click.option("--batch-window", default="0ms", show_default=True, help="How long a server waits to fill a batch.")
@click.option("--batch-slowdown", default=0.05, show_default=True, help="Extra time per extra request in a batch.")
@click.option("--arrival-rate", "arrival_rates", default=None,
              help="Utterances per second per device (Poisson); default: back to back. A list sweeps the rate and "
                   "prints a throughput–latency table: --arrival-rate 0.1,0.2,0.5.")
@click.option("--utterances-per-device", default=None, type=int, help="Default: the whole trace.")
@click.option("--network", "network_name", default=None, help="Network preset (jitter and loss are sampled).")
@click.option("--rtt", default=None, help="Override the network's RTT.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path),
              help="Per-utterance fleet results (.parquet or .csv), with policy, network, costs, seed and provenance.")
@click.option("--timeline", "timeline_path", type=click.Path(path_type=Path),
              help="Also write the run as a Chrome/Perfetto trace (.json): one track per device and per cloud server, "
                   "at the engine's own times (one arrival rate only).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (per rate) as JSON instead.")
@FORCE_BIG_OPTION
def fleet(trace_path, k, gate, accept, bonus, privacy, cloud_cache, cost_mode, edge_device, cloud_device, devices,
          servers, max_batch, batch_window, batch_slowdown, arrival_rates, utterances_per_device, network_name, rtt,
          seed, out, timeline_path, as_json, force):
    """Play one policy on a fleet (SimPy): devices share batching cloud servers; jitter and loss are sampled.

    \b
    Examples:
      sectrace fleet --devices 100 --servers 2 --network 4g
      sectrace fleet --devices 20 --arrival-rate 0.05 --rtt 80ms --out fleet.parquet
      sectrace fleet --devices 20 --arrival-rate 0.01,0.02,0.05,0.1     # throughput vs latency
      sectrace fleet --devices 4 --servers 2 --utterances-per-device 3 --timeline fleet.json
    """
    from dataclasses import replace

    import polars as pl

    from ..simulate import Network, Replayer, profiles
    from ..simulate.budget import check_fleet
    from ..simulate.fleet import (
        FLEET_DEFINITIONS,
        Fleet,
        FleetRecord,
        fleet_summary,
        fleet_table,
        plans,
        simulate_fleet,
    )
    from ..simulate.profiles import base_cost
    from ..simulate.provenance import provenance_columns
    from ..units import parse_duration

    if out:
        check_output(out, force)
    if timeline_path:
        check_output(timeline_path, force, suffixes=(".json",), flag="--timeline")
    rates = ([None] if arrival_rates is None else
             split_list([arrival_rates], "arrival rate", positive_float("arrival rate", "--arrival-rate 0.1,0.2")))
    if timeline_path and len(rates) > 1:
        raise UserError("--timeline draws one fleet run; give one --arrival-rate (or none) with it")
    tr = load_trace_or_sample(trace_path)
    max_new = int(tr.manifest["decoding"].get("max_new_tokens", 64))
    pol = one_policy(k, gate, accept, bonus, privacy, cloud_cache, max_new)
    cost = base_cost(tr, cost_mode, edge_device, cloud_device)
    net = profiles.network_preset(network_name) if network_name else Network()
    if rtt:
        net = replace(net, rtt_s=parse_duration(rtt, "--rtt", require_unit=True))
    window = parse_duration(batch_window, "--batch-window", require_unit=True)
    fleets = [Fleet(devices=devices, servers=servers, max_batch=max_batch, batch_window_s=window,
                    batch_slowdown=batch_slowdown, arrival_rate=r, utterances_per_device=utterances_per_device,
                    seed=seed) for r in rates]
    check_fleet(devices, (utterances_per_device or tr.utterances.height) * len(rates), force)
    rp = Replayer(tr)
    rep = rp.replay(pol)
    plan = plans(rp, rep)
    prov = provenance_columns(tr, command_line())
    record = FleetRecord() if timeline_path else None
    runs = [fleet_table(simulate_fleet(plan, cost, net, fl, stateful=cloud_cache == "stateful", record=record), rep,
                        cost, net, fl, prov) for fl in fleets]
    if out:
        write_table(pl.concat(runs, how="diagonal_relaxed"), out)
    if timeline_path:
        from ..fsio import write_json
        from ..reports.timeline import fleet_trace

        meta = {**prov, "policy": pol.label, **fleets[0].__dict__, "network": net.__dict__, "cost_source": cost.source,
                "stateful": cloud_cache == "stateful"}
        write_json(fleet_trace(record, devices, servers, meta, arrivals=fleets[0].arrival_rate is not None),
                   timeline_path)
    summaries = [{"arrival_rate": fl.arrival_rate, **fleet_summary(df)} for fl, df in zip(fleets, runs)]
    if as_json:
        click.echo(to_json({"provenance": prov, "policy": pol.label, "devices": devices, "servers": servers,
                            "max_batch": max_batch, "batch_window_s": window, "batch_slowdown": batch_slowdown,
                            "network": net.__dict__, "costs": cost.__dict__, "seed": seed,
                            "definitions": FLEET_DEFINITIONS, "runs": summaries, "out": str(out) if out else None}))
        return
    click.echo(f"policy: {pol.label}   {devices} devices, {servers} servers, batch ≤{max_batch}")
    if len(rates) == 1:
        for key, v in summaries[0].items():
            if key == "arrival_rate" and v is None:
                continue
            click.echo(f"  {key:<22} {v:,.4g}" if isinstance(v, float) else f"  {key:<22} {v}")
        parts = ["edge_s", "uplink_s", "queue_s", "cloud_s", "downlink_s"]
        click.echo("  mean seconds: " + ", ".join(f"{p[:-2]} {runs[0][p].mean():.3f}" for p in parts))
    else:
        _throughput_table(summaries, devices)
    if out:
        click.echo(f"per-utterance fleet results: {out}")
    if timeline_path:
        click.echo(f"timeline: {timeline_path} ({len(record.device)} device stretches, {len(record.batches)} server "
                   "batches); open it in ui.perfetto.dev")


def _throughput_table(summaries, devices):
    """One line per arrival rate: offered load, throughput, response-time percentiles, queueing."""
    head = ["rate/dev", "offered", "captions/s", "cloud tok/s", "resp p50", "resp p95", "resp p99", "queue"]
    rows = [[f"{s['arrival_rate']:g}", f"{s['arrival_rate'] * devices:.3g}", f"{s['captions_per_s']:.3g}",
             f"{s.get('cloud_tokens_per_s', float('nan')):.3g}", f"{s['response_p50_s']:.2f} s",
             f"{s['response_p95_s']:.2f} s", f"{s['response_p99_s']:.2f} s", f"{s['queue_mean_s']:.3f} s"]
            for s in summaries]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    click.echo("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    for r in rows:
        click.echo("  ".join(v.rjust(w) for v, w in zip(r, widths)))
    click.echo("rate/dev: Poisson arrivals per device per s; offered: captions/s asked of the fleet; captions/s and "
               "cloud tok/s: finished while every device still sends, per s; resp: arrival → last token "
               "(percentiles over captions); queue: mean seconds a caption's cloud requests waited for a server")
