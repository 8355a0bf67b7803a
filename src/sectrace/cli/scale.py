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
    flag_policies,
    positive_float,
    progress_bar,
    require_extra,
    split_list,
    step,
    to_json,
    trace_option,
    verbosity_options,
    with_options,
)


@click.command()
@click.argument("grid", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Summary per (policy, config): .parquet or .csv.")
@trace_option("The trace (default: the grid's, or the bundled sample trace).", positional=False)
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
@verbosity_options
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
    with progress_bar(total=len(policies), desc="sweeping", unit="policy", leave=False) as bar:
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
@trace_option()
@with_options(POLICY_OPTIONS)
@click.option("--edge-tps", "tps", multiple=True, default=["0.5,1,2,4,8,16,32,64"], show_default=True,
              help="Edge decode speeds (tokens/s) to map; comma-separated or repeated.")
@click.option("--rtt", "rtts", multiple=True, default=["1ms,10ms,20ms,50ms,100ms,200ms,600ms"], show_default=True,
              help="Round-trip times to map; comma-separated or repeated.")
@click.option("--network", "network_name", default=None, help="Network preset for bandwidths, jitter, loss.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the map as a table (.parquet or .csv).")
@click.option("--json", "as_json", is_flag=True, help="Print the map as JSON instead.")
@FORCE_BIG_OPTION
@verbosity_options
def breakeven(trace_path, ks, gates, accept, bonus, privacy, cloud_cache, cost_mode, edge_device, cloud_device, tps,
              rtts, network_name, out, as_json, force):
    """Where, in the edge tok/s × RTT plane, the hybrid beats edge-only and cloud-only (mean latency).

    In the printed map: H = hybrid fastest, E = edge-only fastest, C = cloud-only fastest;
    lower case h: the hybrid beats edge-only but not cloud-only; a ~ after the letter: the hybrid
    and edge-only differ by less than resampling noise (paired bootstrap over utterances). Several --k or --gate
    values map each policy (every combination), one map after the other; the rows carry k.

    \b
    Examples:
      sectrace breakeven --costs study
      sectrace breakeven -t my-trace --gate margin:0.3 --k 3,5 --edge-tps 1,2,4,8 --rtt 10ms,200ms --out map.parquet
    """
    import polars as pl

    from ..simulate import Network, Replayer, profiles
    from ..simulate.profiles import base_cost
    from ..simulate.sweep import breakeven as run_map
    from ..units import parse_duration

    if out:
        check_output(out, force)
    with step("loading the trace"):
        tr = load_trace_or_sample(trace_path)
    max_new = int(tr.manifest["decoding"].get("max_new_tokens", 64))
    pols = flag_policies(ks, gates, accept, bonus, privacy, cloud_cache, max_new, tr)
    cost = base_cost(tr, cost_mode, edge_device, cloud_device)
    net = profiles.network_preset(network_name) if network_name else Network()
    tps_list = split_list(tps, "edge speed", positive_float("edge speed", "--edge-tps 2,4,8"))
    rtt_list = [parse_duration(r, "--rtt", require_unit=True) for r in split_list(rtts, "RTT", str)]
    rp = Replayer(tr)
    maps = []
    for pol in pols:
        with step(f"mapping {pol.label}"):
            m = run_map(rp, pol, cost, net, tps_list, rtt_list, force=force)
        maps.append(m.insert_column(1, pl.lit(pol.k).alias("k")))
    m = pl.concat(maps)
    if out:
        write_table(m, out)
    if as_json:
        from ..simulate.provenance import provenance_columns

        click.echo(to_json({"provenance": provenance_columns(tr, command_line()),
                            "policies": [p.label for p in pols], "costs": cost.__dict__, "network": net.__dict__,
                            "mean": "latency means over the covered utterances; paired_speedup_vs_edge/_cloud: "
                                    "Σ baseline / Σ hybrid latency on the utterances the hybrid covers, with a paired "
                                    "bootstrap 95 % interval (_lo, _hi; same resampled utterances for both); "
                                    "beats_edge_sure / loses_to_edge_sure: that interval excludes 1",
                            "map": m.to_dicts(),
                            "out": str(out) if out else None}))
        return
    for n, pol in enumerate(pols):
        if n:
            click.echo("")
        click.echo(f"policy: {pol.label}   costs: {cost.source}")
        click.echo("edge tok/s \\ RTT " + " ".join(f"{r * 1000:>6.0f}ms" for r in rtt_list))
        mine = m.filter(pl.col("policy") == pol.label)
        for t in tps_list:
            row = mine.filter(mine["edge_tps"] == t)
            cells = []
            for r in row.iter_rows(named=True):
                best = min(("H", r["hybrid_s"]), ("E", r["edge_only_s"]), ("C", r["cloud_only_s"]),
                           key=lambda x: x[1])[0]
                cell = "h" if best == "C" and r["beats_edge"] else best
                noise = not (r["beats_edge_sure"] or r["loses_to_edge_sure"])
                cells.append(cell + ("~" if noise else ""))
            click.echo(f"{t:>16g} " + " ".join(f"{c:>8}" for c in cells))
    click.echo("H hybrid fastest · E edge-only fastest · C cloud-only fastest · "
               "h hybrid beats edge-only, cloud-only fastest (mean latency over the covered utterances) · "
               "~ hybrid vs edge-only within resampling noise (the paired 95 % interval of the speedup holds 1)")
    if out:
        click.echo(f"map: {out} ({m.height} rows)")


@click.command()
@trace_option()
@with_options(POLICY_OPTIONS)
@click.option("--devices", default=10, show_default=True, help="Edge devices sharing the cloud.")
@click.option("--servers", default=1, show_default=True, help="Cloud GPU servers.")
@click.option("--max-batch", default=8, show_default=True, help="Verifications a server runs as one batch.")
@click.option("--batch-window", default="0ms", show_default=True, help="How long a server waits to fill a batch.")
@click.option("--batch-slowdown", default=0.05, show_default=True, help="Extra time per extra request in a batch.")
@click.option("--arrival-rate", "arrival_rates", multiple=True,
              help="Utterances per second per device (Poisson); default: back to back. A list sweeps the rate and "
                   "prints a throughput–latency table: --arrival-rate 0.1,0.2,0.5.")
@click.option("--utterances-per-device", default=None, type=int, help="Default: the whole trace.")
@click.option("--network", "network_name", default=None, help="Network preset (jitter and loss are sampled).")
@click.option("--rtt", "rtts", multiple=True, help="Override the network's RTT; several play each: --rtt 20ms,80ms.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path),
              help="Per-utterance fleet results (.parquet or .csv), with policy, network, costs, seed and provenance.")
@click.option("--timeline", "timeline_path", type=click.Path(path_type=Path),
              help="Also write the run as a Chrome/Perfetto trace (.json): one track per device and per cloud server, "
                   "at the engine's own times (one policy, one RTT and one arrival rate only).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (per policy, RTT and rate) as JSON instead.")
@FORCE_BIG_OPTION
@verbosity_options
def fleet(trace_path, ks, gates, accept, bonus, privacy, cloud_cache, cost_mode, edge_device, cloud_device, devices,
          servers, max_batch, batch_window, batch_slowdown, arrival_rates, utterances_per_device, network_name, rtts,
          seed, out, timeline_path, as_json, force):
    """Play a policy on a fleet (SimPy): devices share batching cloud servers; jitter and loss are sampled.

    Several --k, --gate or --rtt values play each combination, one fleet after the other;
    every row and summary carries its policy (k, gate) and RTT.

    \b
    Examples:
      sectrace fleet --devices 100 --servers 2 --network 4g
      sectrace fleet --devices 20 --arrival-rate 0.05 --rtt 80ms --out fleet.parquet
      sectrace fleet --devices 20 --arrival-rate 0.01,0.02,0.05,0.1     # throughput vs latency
      sectrace fleet --devices 20 --k 3,5 --rtt 20ms,80ms --json
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
    rates = ([None] if not arrival_rates else
             split_list(arrival_rates, "arrival rate", positive_float("arrival rate", "--arrival-rate 0.1,0.2")))
    with step("loading the trace"):
        tr = load_trace_or_sample(trace_path)
    max_new = int(tr.manifest["decoding"].get("max_new_tokens", 64))
    pols = flag_policies(ks, gates, accept, bonus, privacy, cloud_cache, max_new, tr)
    cost = base_cost(tr, cost_mode, edge_device, cloud_device)
    base = profiles.network_preset(network_name) if network_name else Network()
    nets = ([replace(base, rtt_s=parse_duration(r, "--rtt", require_unit=True)) for r in split_list(rtts, "RTT", str)]
            if rtts else [base])
    window = parse_duration(batch_window, "--batch-window", require_unit=True)
    fleets = [Fleet(devices=devices, servers=servers, max_batch=max_batch, batch_window_s=window,
                    batch_slowdown=batch_slowdown, arrival_rate=r, utterances_per_device=utterances_per_device,
                    seed=seed) for r in rates]
    check_fleet(devices, (utterances_per_device or tr.utterances.height) * len(rates) * len(pols) * len(nets), force)
    rp = Replayer(tr)
    prov = provenance_columns(tr, command_line())
    if timeline_path and len(rates) * len(pols) * len(nets) > 1:
        raise UserError("--timeline draws one fleet run; give one --k, one --gate, one --rtt and one --arrival-rate "
                        "(or none) with it")
    record = FleetRecord() if timeline_path else None
    groups = []  # (policy, network, [(fleet, rows)]) in the order they print
    for pol in pols:
        with step(f"replaying {pol.label}"):
            rep = rp.replay(pol)
            plan = plans(rp, rep)
        for net in nets:
            runs = []
            for fl in fleets:
                with step(f"fleet {pol.label}, RTT {net.rtt_s * 1000:g} ms, rate {fl.arrival_rate}"):
                    played = simulate_fleet(plan, cost, net, fl, stateful=cloud_cache == "stateful", record=record)
                    runs.append((fl, fleet_table(played, rep, cost, net, fl, prov)))
            groups.append((pol, net, runs))
    if out:
        write_table(pl.concat([df for *_, runs in groups for _, df in runs], how="diagonal_relaxed"), out)
    if timeline_path:
        from ..fsio import write_json
        from ..reports.timeline import fleet_trace

        pol, net = pols[0], nets[0]
        meta = {**prov, "policy": pol.label, **fleets[0].__dict__, "network": net.__dict__, "cost_source": cost.source,
                "stateful": cloud_cache == "stateful"}
        write_json(fleet_trace(record, devices, servers, meta, arrivals=fleets[0].arrival_rate is not None),
                   timeline_path)
    summaries = [{"policy": pol.label, "k": pol.k, "gate": pol.gate_spec, "rtt_s": net.rtt_s,
                  "arrival_rate": fl.arrival_rate, **fleet_summary(df)}
                 for pol, net, runs in groups for fl, df in runs]
    if as_json:
        click.echo(to_json({"provenance": prov, "policies": [p.label for p in pols], "devices": devices,
                            "servers": servers, "max_batch": max_batch, "batch_window_s": window,
                            "batch_slowdown": batch_slowdown, "networks": [n.__dict__ for n in nets],
                            "costs": cost.__dict__, "seed": seed, "definitions": FLEET_DEFINITIONS,
                            "runs": summaries, "out": str(out) if out else None}))
        return
    shown = {"policy", "k", "gate", "rtt_s"}
    for n, (pol, net, runs) in enumerate(groups):
        if n:
            click.echo("")
        where = f", RTT {net.rtt_s * 1000:g} ms" if len(nets) > 1 else ""
        click.echo(f"policy: {pol.label}   {devices} devices, {servers} servers, batch ≤{max_batch}{where}")
        mine = summaries[n * len(fleets):(n + 1) * len(fleets)]
        if len(rates) == 1:
            for key, v in mine[0].items():
                if key in shown or (key == "arrival_rate" and v is None):
                    continue
                click.echo(f"  {key:<22} {v:,.4g}" if isinstance(v, float) else f"  {key:<22} {v}")
            parts = ["edge_s", "uplink_s", "queue_s", "cloud_s", "downlink_s"]
            click.echo("  mean seconds: " + ", ".join(f"{p[:-2]} {runs[0][1][p].mean():.3f}" for p in parts))
        else:
            _throughput_table(mine, devices)
    if len(rates) > 1:
        click.echo(THROUGHPUT_LEGEND)
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


THROUGHPUT_LEGEND = ("rate/dev: Poisson arrivals per device per s; offered: captions/s asked of the fleet; captions/s "
                     "and cloud tok/s: finished while every device still sends, per s; resp: arrival → last token "
                     "(percentiles over captions); queue: mean seconds a caption's cloud requests waited for a "
                     "server")
