"""The edge client: the local drafter plus the cloud service, driven by the one protocol function.

:class:`LiveSession` is a :class:`sectrace.protocol.Session` like the trace replay's, so the
live run and the simulator execute the same :func:`sectrace.protocol.run`. Its ``judge`` is a
network call; when the call fails (unreachable service, timeout, overload) it raises
:class:`~sectrace.protocol.CloudUnavailable` and the protocol commits the edge's own draft:
the caption is never lost, and the run counts the fallback.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import msgpack

from ..errors import UserError
from ..protocol import CloudUnavailable, Commit, Judgement, Policy, bonus_earned, committed_tokens, run
from . import wire


class SessionGone(Exception):
    """The service no longer holds the session (evicted after being idle, or restarted)."""


@dataclass
class Traffic:
    calls: int = 0
    bytes_up: int = 0  # request bodies
    bytes_down: int = 0  # response bodies
    failures: int = 0
    reopened: int = 0


class CloudClient:
    """One persistent HTTP/1.1 connection to the verifier service (httpx keeps it alive)."""

    def __init__(self, url: str, key: str | None, timeout_s: float = 30.0, transport=None):
        import socket

        import httpx

        headers = {"accept": wire.MSGPACK, "content-type": wire.MSGPACK}
        if transport is None:  # without TCP_NODELAY a request's body waits for the ACK of its headers (~40 ms)
            transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        if key:
            headers["authorization"] = f"Bearer {key}"
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport)
        self.url = url
        self.traffic = Traffic()
        self.last_call = (math.nan, math.nan)  # perf_counter when the last body left and its reply was read

    def close(self):
        self.http.close()

    def _check(self, r, path):
        if r.status_code < 400:
            return
        try:
            msg = r.json().get("error", r.text[:200])
        except ValueError:
            msg = r.text[:200]
        if r.status_code == 404 and "/sessions/" in path:
            raise SessionGone(msg)
        if r.status_code in (408, 429, 503) or r.status_code >= 500:
            self.traffic.failures += 1
            raise CloudUnavailable(f"the service answered {r.status_code}: {msg}")
        # A refused request is a misconfiguration (wrong key, other tokenizer, limits): say so, do not hide it.
        raise UserError(f"the verifier service refused {path} ({r.status_code}): {msg}")

    def post(self, path: str, obj: dict) -> dict:
        import httpx

        data = msgpack.packb(obj, use_bin_type=True)
        sent = time.perf_counter()
        try:
            r = self.http.post(path, content=data)
        except httpx.HTTPError as exc:
            self.traffic.failures += 1
            self.last_call = (sent, time.perf_counter())
            raise CloudUnavailable(f"{type(exc).__name__} calling {self.url}{path}") from None
        self.last_call = (sent, time.perf_counter())
        self.traffic.calls += 1
        self.traffic.bytes_up += len(data)
        self.traffic.bytes_down += len(r.content)
        self._check(r, path)
        return msgpack.unpackb(r.content, raw=False)

    def delete(self, path: str) -> None:
        import httpx

        try:
            self.http.delete(path)
        except httpx.HTTPError:
            pass  # best effort: idle sessions expire anyway

    def info(self) -> dict:
        import httpx

        try:
            r = self.http.get("/v1/info")
        except httpx.HTTPError as exc:
            raise UserError(f"cannot reach the verifier service at {self.url} ({type(exc).__name__}); is "
                            "`sectrace serve` running there?") from None
        self._check(r, "/v1/info")
        return r.json()


class CallTimes(NamedTuple):
    """One verify call as the edge's clock saw it (``perf_counter`` seconds; :func:`decode_live` makes them
    relative to the caption's start), and the service's own time for it from the reply: how a live run's
    round trip splits into the edge's work, the wire and the service (`validate`'s per-event table)."""

    start: float  # judge() entered: the gate has decided to escalate
    sent: float  # the request body is encoded and leaves
    received: float  # the reply is read
    end: float  # the reply is decoded into judgements
    ok: bool  # False: the call failed (the protocol falls back)
    compute_ms: float  # the service's forward pass and judgements
    queue_ms: float  # waiting for the service's model lock


@dataclass
class CloudInputs:
    """What this utterance may send to the cloud under its privacy mode (built by the caller)."""

    prompt: list[int]
    features: dict | None = None  # name → wire tensor (privacy `features`, audio backends)
    audio: bytes | None = None  # PCM16 (privacy `raw`)


class LiveSession:
    """One utterance decoded live: drafter here, verifier over HTTP."""

    def __init__(self, drafter, edge_prompt: list[int], eos: frozenset, client: CloudClient, policy: Policy,
                 cloud: CloudInputs):
        from ..models.lm import draft_token

        self._draft_token = draft_token
        self.drafter = drafter  # a CachedLM with one slot: a crop never copies the cache
        self.edge_prompt = list(edge_prompt)
        self.eos = eos
        self.client = client
        self.policy = policy
        self.cloud = cloud
        self.root = ()
        self.sid: str | None = None
        self.held: list[int] = []  # caption tokens the cloud session is known to hold
        self._stream = None
        self._records = None
        self.call_log: list[CallTimes] | None = None  # set to a list to time every verify call (validate does)

    # --- the edge ----------------------------------------------------------------------
    def draft(self, prefix):
        logits = self.drafter.logits_for(self.edge_prompt + list(prefix), 1)
        return self._draft_token(logits[0], self.eos)

    def advance(self, prefix, token):
        return tuple(prefix) + (int(token),)

    # --- the cloud ---------------------------------------------------------------------
    def _session_fields(self, mode) -> dict:
        out = {"mode": mode, "prompt": wire.pack_ids(self.cloud.prompt)}
        if self.cloud.features:
            out["features"] = self.cloud.features
        if self.cloud.audio is not None:
            out["audio"] = self.cloud.audio
        return out

    def judge(self, prefix, tokens, mode):
        if not tokens:
            return [self._next_streamed(mode)]
        if self.call_log is None:
            return self._judge(prefix, tokens, mode)
        start = time.perf_counter()
        out: dict = {}
        try:
            return self._judge(prefix, tokens, mode, out)
        finally:
            sent, received = self.client.last_call
            self.call_log.append(CallTimes(start, sent, received, time.perf_counter(), bool(out),
                                           out.get("compute_ms", math.nan), out.get("queue_ms", math.nan)))

    def _judge(self, prefix, tokens, mode, reply: dict | None = None):
        prefix = list(prefix)
        p = self.policy
        bonus = bonus_earned(p, tokens[-1] in self.eos, len(prefix), len(tokens))
        block = {"draft": wire.pack_ids(tokens), "accept": str(p.accept), "bonus": bonus}
        if p.cloud_cache == "stateless":
            out = self.client.post("/v1/verify", {**self._session_fields(mode), "committed": wire.pack_ids(prefix),
                                                  **block})
        else:
            out = self._stateful(prefix, block, mode)
            self.held = prefix + committed_tokens(tokens, out["accepted"], out["top1"].__getitem__, bonus)
        if reply is not None:
            reply.update(out)
        return [Judgement(r, math.nan if pr is None else pr, t, tp, e, math.nan) for r, pr, t, tp, e in
                zip(out["rank"], out["prob"], out["top1"], out["top1_prob"], out["top1_eos"])]

    def _stateful(self, prefix, block, mode):
        for attempt in (0, 1):
            if self.sid is None:
                out = self.client.post("/v1/sessions", {**self._session_fields(mode),
                                                        "committed": wire.pack_ids(prefix), **block})
                self.sid = out["session"]
                return out
            base = 0
            for a, b in zip(self.held, prefix):
                if a != b:
                    break
                base += 1
            try:
                return self.client.post(f"/v1/sessions/{self.sid}/verify",
                                        {"base": base, "new": wire.pack_ids(prefix[base:]), **block})
            except SessionGone:
                self.sid, self.held = None, []
                self.client.traffic.reopened += 1
            except CloudUnavailable:
                # The service may or may not have taken the call: all we know it holds is the common prefix.
                self.held = self.held[:base]
                raise
        raise CloudUnavailable("the session was lost twice in a row")

    def _next_streamed(self, mode) -> Judgement:
        import httpx

        try:
            if self._stream is None:
                body = msgpack.packb({**self._session_fields(mode), "max_new_tokens": self.policy.max_new_tokens},
                                     use_bin_type=True)
                req = self.client.http.build_request("POST", "/v1/generate", content=body)
                self._stream = self.client.http.send(req, stream=True)
                self.client.traffic.calls += 1
                self.client.traffic.bytes_up += len(body)
                if self._stream.status_code >= 400:
                    self._stream.read()
                    self.client._check(self._stream, "/v1/generate")
                self._records = self._stream.iter_raw()
                self._buf = b""
            size = wire.TOKEN_RECORD.size
            while len(self._buf) < size:
                chunk = next(self._records, None)
                if chunk is None:
                    raise CloudUnavailable("the token stream ended early")
                self._buf += chunk
                self.client.traffic.bytes_down += len(chunk)
            tok, prob, eos = wire.TOKEN_RECORD.unpack(self._buf[:size])
            self._buf = self._buf[size:]
            return Judgement(0, math.nan, tok, prob, eos, math.nan)
        except httpx.HTTPError as exc:
            self.client.traffic.failures += 1
            self.close()
            raise CloudUnavailable(f"{type(exc).__name__} while streaming from the service") from None
        except CloudUnavailable:
            self.close()
            raise

    def close(self):
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self.sid is not None:
            self.client.delete(f"/v1/sessions/{self.sid}")
            self.sid = None


@dataclass
class LiveRun:
    """One utterance decoded live: the protocol's run plus what the clock and the wire said."""

    run: object
    latency_s: float
    ttft_s: float
    calls: int
    bytes_up: int
    bytes_down: int
    fallbacks: int
    reopened: int
    marks: list = field(default_factory=list)  # (seconds since start, event) for every event
    call_times: list = field(default_factory=list)  # CallTimes per verify call, seconds since start


def decode_live(session: LiveSession, policy: Policy, keep_marks: bool = False) -> LiveRun:
    """Run the protocol live and time it: latency until the last token is final, TTFT until the first.

    ``keep_marks`` also keeps every event's time and every verify call's :class:`CallTimes`, all read from
    the clock that times the latency, so the stretches between them add up to it (`validate`'s per-event
    table)."""
    before = session.client.traffic
    c0, u0, d0, r0 = before.calls, before.bytes_up, before.bytes_down, before.reopened
    marks: list = []
    first: list = []
    if keep_marks:
        session.call_log = []
    t0 = time.perf_counter()

    def observe(ev):
        now = time.perf_counter() - t0
        if keep_marks:
            marks.append((now, ev))
        if not first and type(ev) is Commit and ev.n:
            first.append(now)

    try:
        r = run(session, policy, observe)
        total = time.perf_counter() - t0
    finally:
        session.close()  # closing the session is not on the caption's clock
    t = session.client.traffic
    calls = [CallTimes(c.start - t0, c.sent - t0, c.received - t0, c.end - t0, *c[4:]) for c in session.call_log or ()]
    session.call_log = None
    return LiveRun(r, total, first[0] if first else total, t.calls - c0, t.bytes_up - u0, t.bytes_down - d0,
                   r.fallbacks, t.reopened - r0, marks, calls)
