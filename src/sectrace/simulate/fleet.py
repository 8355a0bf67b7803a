"""The SimPy fleet engine: many edge devices, cloud GPU servers that queue and batch verifications.

It plays the same schedules as the closed form (``replay.schedule_features`` with marks): each
utterance becomes alternating steps, *edge work* (prefill, drafts, gate calls) and *calls* (uplink,
cloud work, downlink), priced with the same cost vector. What the closed form cannot see is added
here: devices share servers (queueing), servers batch requests (max batch, batching window),
stateful sessions stay pinned to the server holding their KV cache, and each message samples
jitter and loss (every loss costs one retransmission timeout). With one device, no jitter, no loss
and no batching window the two engines agree on every utterance (tests/test_fleet.py).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import polars as pl

from ..errors import UserError
from ..network import Network
from ..protocol import Fallback, GateCall, Verify
from .costs import CostModel
from .metrics import DEFINITIONS, METRICS, utterance_counts
from .replay import FEATURES, FI, Replay, Replayer, cloud_tokens
from .spans import event_features
from .timing import PARTS, cost_vector

_UP = np.zeros(len(FEATURES), bool)
_UP[[FI["up_msgs"], FI["up_bytes"]]] = True
_DOWN = np.zeros(len(FEATURES), bool)
_DOWN[[FI["down_msgs"], FI["down_bytes"]]] = True
_CLOUD = np.zeros(len(FEATURES), bool)
_CLOUD[[FI[n] for part in ("cloud_prefill", "cloud_verify", "cloud_decode") for n in PARTS[part]]] = True
_EDGE = ~(_UP | _DOWN | _CLOUD)
_PHASES = (("edge", _EDGE), ("up", _UP), ("cloud", _CLOUD), ("down", _DOWN))


#: Columns of a fleet run, typed up front: inferred from the first rows, a start of 0 (SimPy's integer
#: clock) once made ``start_s`` an integer column and truncated every later start.
FLEET_SCHEMA = {"device": pl.Int64, "utt_id": pl.String, "arrival_s": pl.Float64, "start_s": pl.Float64,
                "finish_s": pl.Float64, "edge_s": pl.Float64, "uplink_s": pl.Float64, "queue_s": pl.Float64,
                "cloud_s": pl.Float64, "downlink_s": pl.Float64, "cloud_calls": pl.Int64, "servers_used": pl.Int64}


@dataclass(frozen=True)
class Fleet:
    """The fleet around one (cost model, network) configuration.

    ``arrival_rate``: utterances per second per device (Poisson); ``None`` plays each device's
    utterances back to back. ``batch_slowdown``: a batch of b verifications takes the longest
    one's time × (1 + batch_slowdown·(b−1)), a modelling assumption (batch-1 decoding is memory
    bound, so extra requests cost little until compute saturates).
    """

    devices: int = 1
    servers: int = 1
    max_batch: int = 8
    batch_window_s: float = 0.0
    batch_slowdown: float = 0.05
    arrival_rate: float | None = None
    utterances_per_device: int | None = None  # default: each device plays the whole trace once
    seed: int = 0

    def __post_init__(self):
        if self.devices < 1 or self.servers < 1:
            raise UserError("a fleet needs at least one device and one cloud server")
        if self.max_batch < 1:
            raise UserError("--max-batch must be at least 1")
        if self.batch_window_s < 0 or self.batch_slowdown < 0:
            raise UserError("the batching window and batch slowdown cannot be negative")
        if self.arrival_rate is not None and self.arrival_rate <= 0:
            raise UserError("the arrival rate must be positive, e.g. 0.01 utterances/s per device")


@dataclass
class Plan:
    """One utterance cut into steps: ``kinds[i]`` is 0 for edge work, 1 for a call; feature rows per phase."""

    utt_id: str
    kinds: list[int]
    edge: np.ndarray  # (edge steps, features)
    up: np.ndarray  # (calls, features)
    cloud: np.ndarray
    down: np.ndarray
    session_first: list[bool]  # per call: the session's first call (pins a stateful session to a server)
    #: gate decisions: (edge step index, that step's features up to and including the gate call, escalate?)
    gates: list = field(default_factory=list)


def plan_utterance(run_, policy, utt: dict) -> Plan:
    """Cut a run's schedule into edge steps and calls, from each event's features (``spans.event_features``)."""
    kinds: list[int] = []
    rows = {"edge": [], "up": [], "cloud": [], "down": []}
    gates: list = []
    events = list(run_.events) + [None]
    last = None  # phase of the step being built
    for i, delta in enumerate(event_features(run_, policy, utt)):
        for phase, mask in _PHASES:
            part = np.where(mask, delta, 0.0)
            if not part.any():
                continue
            if phase == last or (phase == "cloud" and last == "cloud"):
                rows[phase][-1] += part
                continue
            if phase == "edge":
                kinds.append(0)
                rows["edge"].append(part)
            elif phase == "up":
                kinds.append(1)
                rows["up"].append(part)
                rows["cloud"].append(np.zeros(len(FEATURES)))
                rows["down"].append(np.zeros(len(FEATURES)))
            elif phase in ("cloud", "down"):
                if not kinds or kinds[-1] != 1:
                    raise AssertionError(f"{phase} work outside a call in the schedule")
                rows[phase][-1] += part
            last = phase
        if type(events[i]) is GateCall and kinds and kinds[-1] == 0:  # a gate follows the drafts of its block
            gates.append((len(rows["edge"]) - 1, rows["edge"][-1].copy(), type(events[i + 1]) in (Verify, Fallback)))
    n_calls = len(rows["up"])
    z = np.zeros((0, len(FEATURES)))
    return Plan(utt["utt_id"], kinds, np.array(rows["edge"]) if rows["edge"] else z,
                np.array(rows["up"]) if n_calls else z, np.array(rows["cloud"]) if n_calls else z,
                np.array(rows["down"]) if n_calls else z, [i == 0 for i in range(n_calls)], gates)


def plans(replayer: Replayer, rep: Replay) -> list[Plan | None]:
    """Plans for every utterance of a replay (None where the trie was left)."""
    utts = replayer._utts  # noqa: SLF001  (same stage)
    return [None if r is None else plan_utterance(r, rep.policy, utts[uid]) for uid, r in zip(rep.utt_ids, rep.runs)]


class ServerLoad:
    """Where a request goes: the server with the least load (requests queued or in service), ties to the one
    pinning the fewest sessions, then the lowest index: the choice a scan of every server makes, kept in a heap
    so each change and each choice costs O(log servers) (a fleet of 10,000 devices and 200 servers scales
    linearly). Entries go stale when a server's load changes; they are skipped when they reach the top."""

    def __init__(self, servers: int):
        self.n = servers
        self.load = [0] * servers
        self.pinned = [0] * servers
        self.heap = [(0, 0, i) for i in range(servers)]

    def _push(self, i: int) -> None:
        heapq.heappush(self.heap, (self.load[i], self.pinned[i], i))
        if len(self.heap) > 4 * self.n + 64:  # too many stale entries: rebuild from the current keys
            self.heap = [(self.load[j], self.pinned[j], j) for j in range(self.n)]
            heapq.heapify(self.heap)

    def add_load(self, i: int, delta: int) -> None:
        self.load[i] += delta
        self._push(i)

    def add_pin(self, i: int, delta: int) -> None:
        self.pinned[i] += delta
        self._push(i)

    def pick(self) -> int:
        h, load, pinned = self.heap, self.load, self.pinned
        while True:
            ld, pn, i = h[0]
            if ld == load[i] and pn == pinned[i]:
                return i
            heapq.heappop(h)


class _Priced:
    """A plan's step durations under one configuration, as Python floats (fast inside SimPy); with ``record``,
    also its edge steps' names and its gate decisions' offsets into their steps (for a timeline)."""

    __slots__ = ("utt_id", "kinds", "edge", "up", "cloud", "down", "first", "edge_names", "gates")

    def __init__(self, p: Plan, theta: np.ndarray, record: bool = False):
        self.utt_id = p.utt_id
        self.kinds = p.kinds
        self.edge = (p.edge @ theta).tolist()
        self.up = (p.up @ theta).tolist()
        self.cloud = (p.cloud @ theta).tolist()
        self.down = (p.down @ theta).tolist()
        self.first = p.session_first
        self.edge_names = self.gates = None
        if record:
            from .spans import PART_NAMES

            self.edge_names = [" + ".join(PART_NAMES[part] for part in ("edge_prefill", "edge_drafting", "gate")
                                          if row[[FI[f] for f in PARTS[part]]].any()) or "edge"
                               for row in p.edge]
            self.gates = [(step, float(row @ theta), esc) for step, row, esc in p.gates]


@dataclass
class FleetRecord:
    """What a fleet run did, at the SimPy engine's own times (seconds), filled by ``simulate_fleet(record=...)``.

    ``device``: (device, utterance index, utt_id, what, start, duration, server or None) per stretch of
    a device's time: edge work, uplink, queue, cloud (its request in service), downlink; they follow one
    another and add up to the caption's latency. ``batches``: (server, start, duration, members) per
    batch a server ran, members as (device, utterance index, utt_id, call index). ``gates``: (device,
    utterance index, utt_id, time, escalate?). ``captions``: (device, utterance index, utt_id, arrival,
    start, finish)."""

    device: list = field(default_factory=list)
    batches: list = field(default_factory=list)
    gates: list = field(default_factory=list)
    captions: list = field(default_factory=list)


def simulate_fleet(plan_list: Sequence[Plan | None], cost: CostModel, net: Network, fleet: Fleet,
                   stateful: bool = True, record: FleetRecord | None = None) -> pl.DataFrame:
    """Play the plans on a fleet; one row per played utterance (device, times, and where the time went).

    The message delays here exclude jitter and loss from the cost vector (they are sampled instead).
    ``record``: filled with every stretch, batch and gate decision at the engine's times (a timeline);
    without it nothing is recorded and the run costs what it did.
    """
    import simpy

    base_net = Network(rtt_s=net.rtt_s, up_Bps=net.up_Bps, down_Bps=net.down_Bps, overhead_bytes=net.overhead_bytes)
    theta = cost_vector(cost, base_net)
    rec = record
    priced = [_Priced(p, theta, rec is not None) for p in plan_list if p is not None]
    if not priced:
        raise UserError("no utterance of this policy is covered by the trace; nothing to simulate")
    rng = np.random.default_rng(fleet.seed)
    jit = net.jitter_dist()
    loss, rto = net.loss, net.rto_s
    noisy = jit is not None or loss > 0

    # Pre-draw the noise in blocks: far faster than one scipy call per message.
    noise_buf: list[float] = []

    def msg_noise() -> float:
        if not noise_buf:
            n = 4096
            x = jit.rvs(size=n, random_state=rng) if jit is not None else np.zeros(n)
            if loss > 0:
                x = x + rng.geometric(1.0 - loss, size=n).astype(float) * rto - rto
            noise_buf.extend(x.tolist())
        return noise_buf.pop()

    env = simpy.Environment()
    queues = [[] for _ in range(fleet.servers)]  # pending requests per server
    wakeups: list = [None] * fleet.servers  # an event a sleeping server waits on
    servers = ServerLoad(fleet.servers)  # load = queued + in service, and pinned sessions, per server
    window, max_b, slow = fleet.batch_window_s, fleet.max_batch, fleet.batch_slowdown
    cloud_busy_s = [0.0]
    batches: list[int] = []

    def submit(server: int, req):
        queues[server].append(req)
        servers.add_load(server, 1)
        w = wakeups[server]
        if w is not None and not w.triggered:
            w.succeed()

    def server_proc(i: int):
        q = queues[i]
        while True:
            if not q:
                wakeups[i] = env.event()
                yield wakeups[i]
                wakeups[i] = None
            if window > 0 and len(q) < max_b:
                deadline = env.now + window
                while len(q) < max_b and env.now < deadline:
                    wakeups[i] = env.event()
                    yield wakeups[i] | env.timeout(deadline - env.now)
                    wakeups[i] = None
            batch = q[:max_b]
            del q[:max_b]
            servers.add_load(i, 1 - len(batch))  # the batch leaves the queue; the server is busy
            service = max(r[0] for r in batch) * (1.0 + slow * (len(batch) - 1))
            now = env.now
            for r in batch:
                r[2] = now  # service start
            batches.append(len(batch))
            if rec is not None:
                rec.batches.append((i, now, service, [r[3] for r in batch]))
            yield env.timeout(service)
            cloud_busy_s[0] += service
            servers.add_load(i, -1)
            for r in batch:
                r[1].succeed(service)

    rows = []

    def device_proc(d: int, jobs: list[_Priced], arrivals: list[float]):
        for j, (job, t_arr) in enumerate(zip(jobs, arrivals)):
            if env.now < t_arr:
                yield env.timeout(t_arr - env.now)
            start = env.now
            edge_s = up_s = down_s = wait_s = cloud_s = 0.0
            server = None
            used = set()
            ei = ci = 0
            delay = 0.0  # device-side time not yet slept: edge work, links (one timeout per call, not three)
            gi = 0  # next gate decision (recording only)
            for kind in job.kinds:
                if kind == 0:
                    dt = job.edge[ei]
                    if rec is not None:
                        t = env.now + delay
                        rec.device.append((d, j, job.utt_id, job.edge_names[ei], t, dt, None))
                        while gi < len(job.gates) and job.gates[gi][0] == ei:
                            rec.gates.append((d, j, job.utt_id, t + job.gates[gi][1], job.gates[gi][2]))
                            gi += 1
                    ei += 1
                    edge_s += dt
                    delay += dt
                    continue
                dt = job.up[ci] + (msg_noise() if noisy else 0.0)
                up_s += dt
                if rec is not None:
                    rec.device.append((d, j, job.utt_id, "uplink", env.now + delay, dt, None))
                yield env.timeout(delay + dt)
                delay = 0.0
                if server is None or not stateful:
                    server = servers.pick()  # = min over servers of (load, pinned, index); pinned stays 0 if stateless
                    if stateful:
                        servers.add_pin(server, 1)
                    used.add(server)
                done = env.event()
                req = [job.cloud[ci], done, 0.0, None if rec is None else (d, j, job.utt_id, ci)]
                t0 = env.now
                submit(server, req)
                service = yield done
                wait_s += req[2] - t0
                cloud_s += service
                dt = job.down[ci] + (msg_noise() if noisy else 0.0)
                down_s += dt
                if rec is not None:
                    rec.device += [(d, j, job.utt_id, "queue", t0, req[2] - t0, server),
                                   (d, j, job.utt_id, "cloud", req[2], service, server),
                                   (d, j, job.utt_id, "downlink", env.now, dt, None)]
                delay += dt
                ci += 1
            if delay:
                yield env.timeout(delay)
            if stateful and server is not None:
                servers.add_pin(server, -1)
            if rec is not None:
                rec.captions.append((d, j, job.utt_id, float(t_arr), float(start), float(env.now)))
            # float(): SimPy's clock starts at the integer 0, and a start of 0 must not make the column integer
            rows.append((d, job.utt_id, float(t_arr), float(start), float(env.now), edge_s, up_s, wait_s, cloud_s,
                         down_s, ci, len(used)))

    n_per = fleet.utterances_per_device or len(priced)
    for i in range(fleet.servers):
        env.process(server_proc(i))
    for d in range(fleet.devices):
        jobs = [priced[(d + j) % len(priced)] for j in range(n_per)]
        if fleet.arrival_rate is None:
            arrivals = [0.0] * n_per
        else:
            arrivals = np.cumsum(rng.exponential(1.0 / fleet.arrival_rate, size=n_per)).tolist()
        env.process(device_proc(d, jobs, arrivals))
    env.run()
    df = pl.DataFrame(rows, schema=FLEET_SCHEMA, orient="row")
    return df.with_columns((pl.col("finish_s") - pl.col("start_s")).alias("latency_s"),
                           (pl.col("finish_s") - pl.col("arrival_s")).alias("response_s"))


#: What a fleet summary reports, defined next to its name. Percentiles are over the played utterances
#: (linear interpolation); the run's span runs from time 0 to the last caption's finish.
FLEET_DEFINITIONS = {
    "utterances": "captions played (devices × utterances per device, coverage misses excluded)",
    "escalations": "cloud requests, all captions together",
    "latency_mean_s": "mean seconds from a caption's start on its device to its last token",
    "latency_p50_s": "median of that latency", "latency_p95_s": "95th percentile of that latency",
    "latency_p99_s": "99th percentile of that latency",
    "response_p50_s": "median seconds from a caption's arrival to its last token (latency plus waiting for its "
                      "device to finish the previous caption)",
    "response_p95_s": "95th percentile of that response time", "response_p99_s": "99th percentile of that response "
                                                                                 "time",
    "queue_mean_s": "mean seconds per caption its cloud requests waited for a server",
    "queue_p95_s": "95th percentile of those seconds",
    "makespan_s": "seconds from time 0 to the last caption's finish",
    "window_s": "the window throughput is measured over: with Poisson arrivals, time 0 to the earliest last "
                "arrival of any device (every device still sending, so the load is the offered one); back to "
                "back, the makespan",
    "captions_per_s": "throughput: captions finished within the window / window_s",
    "cloud_tokens_per_s": "cloud tokens (verified or decoded, prefill excluded) of the captions finished within "
                          "the window / window_s",
}
#: The speculative-decoding counts a fleet row carries (the policy's replay of that caption; timing-free).
FLEET_COUNTS = ("drafted", "verify_calls", "verified", "accepted", "emitted")
#: simulate's metrics that read only those counts: a fleet summary gives them over the captions it played,
#: by simulate.metrics' definitions (one home), so a fleet and a simulate of the same policy agree.
FLEET_METRICS = tuple(m for m in METRICS if set(m.num + m.den) <= set(FLEET_COUNTS))
FLEET_DEFINITIONS.update({m.name: DEFINITIONS[m.name] + " (over the captions the fleet played)"
                          for m in FLEET_METRICS})


def fleet_summary(df: pl.DataFrame) -> dict:
    """Means, percentiles and throughputs of a fleet run (:data:`FLEET_DEFINITIONS` says what each is)."""
    lat = df["latency_s"].to_numpy()
    resp = df["response_s"].to_numpy()
    queue = df["queue_s"].to_numpy()
    span = float(df["finish_s"].max())
    window = span
    if float(df["arrival_s"].max()) > 0:  # Poisson arrivals: measure while every device still sends
        window = float(df.group_by("device").agg(pl.col("arrival_s").max())["arrival_s"].min())
    done = df.filter(pl.col("finish_s") <= window)
    rate = (lambda x: x / window if window > 0 else float("nan"))  # noqa: E731
    out = {"utterances": df.height, "escalations": int(df["cloud_calls"].sum()),
           "latency_mean_s": float(lat.mean()),
           **{f"latency_p{q}_s": float(np.percentile(lat, q)) for q in (50, 95, 99)},
           **{f"response_p{q}_s": float(np.percentile(resp, q)) for q in (50, 95, 99)},
           "queue_mean_s": float(queue.mean()), "queue_p95_s": float(np.percentile(queue, 95)),
           "makespan_s": span, "window_s": window, "captions_per_s": rate(done.height)}
    if "cloud_tokens" in df.columns:
        out["cloud_tokens_per_s"] = rate(float(done["cloud_tokens"].sum()))
    if set(FLEET_COUNTS) <= set(df.columns):
        cols = {c: df[c].to_numpy() for c in FLEET_COUNTS}
        out.update((m.name, m.value(cols)) for m in FLEET_METRICS)
    return out


def fleet_table(df: pl.DataFrame, rep: Replay, cost: CostModel, net: Network, fleet: Fleet,
                provenance: dict) -> pl.DataFrame:
    """A fleet run's rows as written by ``fleet --out``: each played caption with its cloud tokens, and the
    policy, network, cost model, fleet (seed included) and provenance it was played with, as flat columns
    (``simulate.results.from_row`` rebuilds policy, cost model and network from any row)."""
    from .results import cost_columns, network_columns, policy_columns

    counts = utterance_counts(rep.runs, rep.policy.k)
    tok = pl.DataFrame({"utt_id": rep.utt_ids,
                        "cloud_tokens": cloud_tokens(rep.total),
                        **{c: counts[c] for c in FLEET_COUNTS}})
    scalars = {**provenance, **policy_columns(rep.policy),
               **{k: v[0] for k, v in network_columns([net]).items()},
               **{k: v[0] for k, v in cost_columns([cost]).items()},
               "devices": fleet.devices, "servers": fleet.servers, "max_batch": fleet.max_batch,
               "batch_window_s": fleet.batch_window_s, "batch_slowdown": fleet.batch_slowdown,
               "arrival_rate": fleet.arrival_rate, "utterances_per_device": fleet.utterances_per_device,
               "seed": fleet.seed}
    out = df.join(tok, on="utt_id", how="left", maintain_order="left")
    return out.with_columns(pl.lit(v).alias(k) for k, v in scalars.items())
