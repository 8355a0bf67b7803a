"""Click commands of the live stage: ``sectrace serve`` and ``sectrace validate``.

Heavy imports (torch, transformers, FastAPI) happen inside the commands, so ``sectrace --help``
stays light.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import click

from ..errors import UserError
from ._common import info, progress_bar, require_extra, split_list, to_json, trace_option, verbosity_options


def _keys(key_file: Path | None, no_auth: bool, host: str) -> tuple[dict | None, str | None]:
    from ..live.service import parse_keys

    if no_auth:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise UserError("--no-auth is only allowed on a loopback --host; anyone who can reach the port could "
                            "use the model")
        return None, None
    if key_file is not None:
        try:
            return parse_keys(key_file.read_text()), None
        except OSError as exc:
            raise UserError(f"cannot read the key file {key_file}: {exc.strerror}") from None
    env = os.environ.get("SECTRACE_API_KEY")
    if env:
        return parse_keys(env), None
    key = secrets.token_urlsafe(24)
    return {"client1": key}, key


@click.command("serve")
@click.option("--verifier", required=True, help="Cloud model: a local directory (the trace's verifier).")
@click.option("--backend", type=click.Choice(["causal-lm", "omni-thinker", "qwen2-audio"]), default="causal-lm",
              show_default=True, help="Model kind, as in `sectrace collect`.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port (0: any free port; see --ready-file).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--dtype", default="auto", show_default=True, help="auto, float32, float16 or bfloat16.")
@click.option("--threads", type=int, default=None, help="Torch threads for the model (default: torch's).")
@click.option("--cpus", default=None, help="Pin the service to these cores, e.g. 1 or 2-3 (Linux).")
@click.option("--api-key-file", type=click.Path(path_type=Path),
              help="Bearer keys, one `NAME KEY` (or `KEY`) per line; each key is a client with its own sessions. "
                   "Default: $SECTRACE_API_KEY, else a random key printed at start.")
@click.option("--no-auth", is_flag=True, help="No keys (loopback only; for local experiments).")
@click.option("--max-draft", default=32, show_default=True, help="Longest block a verify call may carry.")
@click.option("--max-context", default=8192, show_default=True, help="Most tokens a session may hold.")
@click.option("--max-body", default="8MB", show_default=True, help="Largest request body.")
@click.option("--sessions-per-client", default=16, show_default=True, help="Open sessions per key.")
@click.option("--max-sessions", default=256, show_default=True, help="Open sessions in all.")
@click.option("--idle", default="120s", show_default=True, help="Close sessions idle this long.")
@click.option("--max-kv-memory", default="auto", show_default=True,
              help="KV-cache memory all sessions and calls may hold together, e.g. 4GB (auto: a quarter of this "
                   "machine's memory; on CUDA half the device's free memory after loading). Past it new work gets "
                   "503.")
@click.option("--header-timeout", default="10s", show_default=True,
              help="Close a connection whose request headers have not all arrived this long after they began.")
@click.option("--body-timeout", default="60s", show_default=True,
              help="Close a connection whose request body has not all arrived this long after its headers.")
@click.option("--ready-file", type=click.Path(path_type=Path), help="Write {\"port\": …} here once listening.")
@verbosity_options
def serve(verifier, backend, host, port, device, dtype, threads, cpus, api_key_file, no_auth, max_draft,
          max_context, max_body, sessions_per_client, max_sessions, idle, max_kv_memory, header_timeout,
          body_timeout, ready_file):
    """Serve the cloud verifier over HTTP for live edge clients.

    An edge opens a session per utterance (the verifier keeps its KV cache between
    blocks) or calls statelessly; each call carries drafted token ids and gets back the
    accepted count, the correction or bonus token and the verifier's judgement. Bodies
    are MessagePack; the OpenAPI schema is at /openapi.json (with a key; no
    interactive docs are served).

    \b
    Examples:
      sectrace serve --verifier ~/.cache/sectrace/models/verifier --port 8000 --api-key-file keys
      sectrace validate --trace TRACE --drafter D --verifier V ...   # starts its own service
    """
    require_extra("serve", "live", "collect")
    from ..fsio import write_json
    from ..live.process import parse_cpus, pin
    from ..live.service import create_app
    from ..live.verifier import check_device, load_cloud_model

    # Every option is checked before the model loads (minutes for a real one): one sentence, exit 2.
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a port; use 1-65535, or 0 for any free port")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, not {threads}")
    check_device(device)
    cores = parse_cpus(cpus)
    keys, generated = _keys(api_key_file, no_auth, host)
    limits = _limits(max_draft, max_context, max_body, sessions_per_client, max_sessions, idle, max_kv_memory,
                     header_timeout, body_timeout)
    if cores:
        pin(cores)
    cloud = load_cloud_model(verifier, backend, device, dtype, threads)
    app = create_app(cloud, keys, limits)

    def announce(bound: int) -> None:
        """What a person (and a parent process, through --ready-file) learns once the port is open."""
        auth = "no auth" if keys is None else f"{len(keys)} key(s)"
        where = f", cores {','.join(map(str, cores))}" if cores else ""
        info(f"serving {verifier} on http://{host}:{bound} ({auth}{where})")
        if generated:
            click.echo(f"API key (generated; pass it as `Authorization: Bearer KEY`): {generated}", err=True)
        if ready_file:
            write_json({"port": bound, "pid": os.getpid()}, ready_file)

    _run_server(app, host, port, announce)


def _limits(max_draft, max_context, max_body, sessions_per_client, max_sessions, idle, max_kv_memory, header_timeout,
            body_timeout):
    """The service's limits from `serve`'s options, checked: one sentence per mistake, before the model loads."""
    from ..live.service import Limits
    from ..units import parse_duration, parse_size

    kv = None if max_kv_memory.strip().lower() == "auto" else parse_size(max_kv_memory, "--max-kv-memory")
    limits = Limits(max_draft=max_draft, max_context=max_context, max_body_bytes=parse_size(max_body, "--max-body"),
                    sessions_per_client=sessions_per_client, max_sessions=max_sessions,
                    idle_s=parse_duration(idle, "--idle", require_unit=True), max_kv_bytes=kv,
                    header_timeout_s=parse_duration(header_timeout, "--header-timeout", require_unit=True),
                    body_timeout_s=parse_duration(body_timeout, "--body-timeout", require_unit=True))
    limits.check()
    return limits


def _run_server(app, host: str, port: int, on_listening) -> None:
    """Serve ``app`` under uvicorn until stopped, calling ``on_listening(port)`` once it listens (port 0 resolved)."""
    import logging

    import uvicorn

    from ..live.service import server_config

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                on_listening(self.servers[0].sockets[0].getsockname()[1])

    logging.basicConfig(level=logging.WARNING)
    server = Server(server_config(app, host, port, timeout_keep_alive=300))
    try:
        server.run()
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None


def _policies(texts, max_new: int):
    from ..gates import parse_policy
    from ..protocol import cloud_only, drafter_only

    out = []
    for text in texts:
        for one in filter(None, (t.strip() for t in text.split(";"))):
            if one in ("edge-only", "edge"):
                out.append(drafter_only(max_new))
            elif one in ("cloud-only", "cloud"):
                out.append(cloud_only(max_new))
            else:
                out.append(parse_policy(one, max_new))
    if not out:
        raise UserError("give at least one --policy")
    return out


@click.command("validate")
@trace_option("The trace to validate: its utterances are decoded live and compared with its replay.", required=True)
@click.option("--drafter", required=True, help="The trace's drafter (local directory).")
@click.option("--verifier", required=True, help="The trace's verifier (local directory).")
@click.option("--policy", "--policies", "policies", multiple=True,
              default=["edge-only", "cloud-only", "k=4 gate=always accept=top1 token-only"], show_default=True,
              help="Policies to run, as in the simulator's labels; several with ; or repeated flags.")
@click.option("--rtt", "rtts", multiple=True, default=["20ms,50ms,100ms"], show_default=True,
              help="Round-trip times to shape; comma-separated or repeated.")
@click.option("--uplink", default="20Mbit/s", show_default=True, help="Edge → cloud bandwidth.")
@click.option("--downlink", default="50Mbit/s", show_default=True, help="Cloud → edge bandwidth.")
@click.option("--jitter", default=None, help="Extra one-way delay per chunk, a scipy.stats spec, e.g. "
                                             "expon(scale=0.002).")
@click.option("--loss", default=0.0, show_default=True, help="Probability a chunk costs a retransmission timeout.")
@click.option("--rto", default="200ms", show_default=True, help="Retransmission timeout per loss.")
@click.option("--manifest", type=click.Path(path_type=Path),
              help="The dataset manifest the trace was collected from (default: found as the trace records it).")
@click.option("--data", type=click.Path(path_type=Path),
              help="A folder holding the trace's dataset manifest by its recorded file name (a trace copied "
                   "without its data; `sectrace demo data DIR` remakes the demo's).")
@click.option("--utterances", "-n", "limit", type=int, help="Only the first N utterances.")
@click.option("--edge-threads", default=1, show_default=True, help="Torch threads of the drafter.")
@click.option("--cloud-threads", default=1, show_default=True, help="Torch threads of the verifier service.")
@click.option("--edge-cpus", default=None, help="Cores for the edge (default: first half).")
@click.option("--cloud-cpus", default=None, help="Cores for the service (default: second half).")
@click.option("--dtype", default="auto", show_default=True, help="Model dtype (the trace's, for exact captions).")
@click.option("--calibrations", default=3, show_default=True,
              help="Calibration rounds (timing the edge and the service), spread before, between and after the "
                   "live runs so that a drifting machine biases neither (called --repeats until the repeats "
                   "below came; docs/live.md).")
@click.option("--repeats", default=1, show_default=True,
              help="Live runs of every utterance × policy × RTT; the error is the simulator's against their "
                   "median, and their spread is the machine's noise floor.")
@click.option("--timeout", default="60s", show_default=True, help="Per call; a call past it falls back to the edge.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Per-run results (Parquet); the run's facts (.json) and per-event residuals (.events.parquet) "
                   "go beside it.")
@click.option("--force", is_flag=True, help="Replace --out.")
@click.option("--dry-run", is_flag=True,
              help="Check the options, find the dataset and say what would run (utterances, calibration prompts, "
                   "what they can identify); load no model.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-condition summary and the run's facts (or, with "
                                                      "--dry-run, the plan) as JSON instead.")
@verbosity_options
def validate(trace_path, drafter, verifier, policies, rtts, uplink, downlink, jitter, loss, rto, manifest, data, limit,
             edge_threads, cloud_threads, edge_cpus, cloud_cpus, dtype, calibrations, repeats, timeout, out, force,
             dry_run, as_json):
    """Measure the simulator's error: run the live system on the trace's utterances and compare.

    Starts `sectrace serve` on its own cores, shapes the path to each RTT with a TCP
    proxy on loopback, fits costs to calibration timings of both sides, decodes every
    utterance live under every policy, and compares latency and time to first token with
    what the simulator predicts for the same trace, policies and network; live captions
    must equal the replay's token for token (mismatches are reported, not timed).
    Calibration rounds (--calibrations) sit before, between and after the live runs,
    each caption runs every RTT back to back, and --repeats N runs every cell N times,
    spread out, so a machine that drifts biases no one condition. The output gives each
    condition's median error of the repeats' median, its bias (mean signed error) with
    a bootstrap 95 % interval, the targets met or not, the machine's noise floor, and
    which event type carries the error (the per-event table, OUT.events.parquet).

    \b
    Examples:
      sectrace validate --trace trace/ --drafter D --verifier V --rtt 20ms,50ms,100ms --out val.parquet
      sectrace validate --trace trace/ --drafter D --verifier V --repeats 3 --calibrations 3 --out val.parquet
      sectrace report ... --validation val.parquet     # the error table in the report
    """
    if not dry_run:
        require_extra("validate", "live", "collect")
    from ..network import parse_jitter
    from ..units import parse_duration, parse_rate
    from ..validate.run import ValidateConfig, events_path, plan, write
    from ..validate.run import validate as run_validate

    if not trace_path.exists():
        raise UserError(f"trace {trace_path} does not exist")
    from ..trace import load_trace

    max_new = int(load_trace(trace_path).manifest.get("decoding", {}).get("max_new_tokens", 64))
    pols = _policies(policies, max_new)
    rtt_list = [parse_duration(r, "--rtt", require_unit=True) for r in split_list(rtts, "RTT", str)]
    parse_jitter(jitter)
    if not 0 <= loss < 1:
        raise UserError(f"--loss {loss} must be a probability in [0, 1)")
    if edge_cpus or cloud_cpus:
        from ..live.process import parse_cpus

        e, c = parse_cpus(edge_cpus), parse_cpus(cloud_cpus)
    else:
        from ..validate.run import default_cpus

        e, c = default_cpus()
    cfg = ValidateConfig(trace_path, drafter, verifier, pols, rtt_list, out, parse_rate(uplink, "--uplink"),
                         parse_rate(downlink, "--downlink"), jitter, loss, parse_duration(rto, "--rto", True),
                         manifest, limit, edge_threads, cloud_threads, e, c, dtype, calibrations,
                         parse_duration(timeout, "--timeout", True), force=force, data=data, repeats=repeats)
    if repeats < 1 or calibrations < 1:
        raise UserError(f"--repeats ({repeats}) and --calibrations ({calibrations}) must be at least 1")
    if dry_run:
        p = plan(cfg)
        if as_json:
            click.echo(to_json(_plan_dict(p, cfg)))
            return
        _print_plan(p, cfg)
        return
    info(f"every utterance × policy × RTT runs {repeats} time(s) (--repeats); {calibrations} calibration "
         "round(s) (--calibrations)")
    df, summary, facts, events = run_validate(cfg, echo=info,
                                              progress_factory=lambda total: progress_bar(total=total,
                                                                                          desc="live runs", unit="run"))
    write(df, facts, out, events)
    written = [out, out.with_suffix(".json")] + ([events_path(out)] if events is not None else [])
    if as_json:
        click.echo(to_json({"summary": summary.to_dicts(), "facts": facts, "out": str(out),
                            "facts_out": str(out.with_suffix(".json")),
                            "events_out": str(events_path(out)) if events is not None else None}))
        return
    from ._validate_out import print_carriers, print_summary

    print_summary(summary, facts)
    print_carriers(facts, events_path(out) if events is not None else None)
    click.echo(f"wrote {', '.join(map(str, written))}")


def _plan_dict(p, cfg) -> dict:
    """`validate --dry-run --json`: what _print_plan says, as data."""
    tr = p["trace"]
    return {"trace": str(tr.path), "trace_utterances": tr.utterances.height, "modes": list(tr.modes),
            "dataset": str(p["manifest"]), "utterances": [u.utt_id for u in p["utterances"]],
            "calibration": [u.utt_id for u in p["calibration"]], "policies": [x.label for x in cfg.policies],
            "rtts_s": list(cfg.rtts), "repeats": cfg.repeats,
            "calibrations": cfg.calibrations,
            "runs": len(p["utterances"]) * len(cfg.policies) * len(cfg.rtts), "noise_note": p["noise_note"],
            "warnings": list(p["warnings"]), "dry_run": True}


def _print_plan(p, cfg):
    """What `validate --dry-run` found: enough to see the command is right before minutes of model loading."""
    tr = p["trace"]
    lengths = dict(zip(tr.utterances["utt_id"].to_list(), tr.utterances["edge_prompt_tokens"].to_list()))
    click.echo(f"trace        {tr.path} ({tr.utterances.height} utterances, modes {', '.join(tr.modes)})")
    click.echo(f"dataset      {p['manifest']}")
    click.echo(f"utterances   {len(p['utterances'])}: {', '.join(u.utt_id for u in p['utterances'])}")
    click.echo("calibration  " + ", ".join(f"{u.utt_id} ({lengths[u.utt_id]} tokens)" for u in p["calibration"]))
    click.echo(f"policies     {len(cfg.policies)}: {'; '.join(x.label for x in cfg.policies)}")
    click.echo(f"rtts         {', '.join(f'{1e3 * r:g}ms' for r in cfg.rtts)}; {cfg.calibrations} calibration "
               f"round(s); {cfg.repeats} repeat(s) of each")
    click.echo(f"runs         {len(p['utterances']) * len(cfg.policies) * len(cfg.rtts) * cfg.repeats} live decodes")
    if p["noise_note"]:
        click.echo(p["noise_note"])
    for w in p["warnings"]:
        click.echo(f"warning: {w}")
    click.echo("dry run: no model loaded")
