"""`sectrace serve`: the cloud verifier as an HTTP service (FastAPI on uvicorn).

Why these choices: FastAPI gives an OpenAPI schema for free (clients and fuzzers are written
against it) and uvicorn keeps HTTP/1.1 connections alive, so an edge pays the connection
set-up once per run, not once per block. Bodies are MessagePack (token ids packed as int32);
JSON is accepted for tools.

Security model: every call but ``/v1/health`` needs a bearer key (the OpenAPI schema too; no
interactive docs are served); a key is a client, and a session belongs to the client that opened
it (another client gets 404, as if it did not exist). Limits bound draft length, context, body
size, sessions per client and in all, and the KV-cache memory all sessions may hold; idle sessions
are evicted and freed memory goes back to the OS. Requests must arrive in time (a deadline on the
headers and on the body, enforced in uvicorn's protocol: slow connections cannot pile up), bodies
over the limit are refused from their Content-Length before they are read, and decoding and model
work run in threads, so the event loop (and ``/v1/health``) stays responsive under load.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import threading
import time
import weakref
from contextlib import asynccontextmanager
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ..errors import UserError
from ..protocol import Accept, PolicyError, committed_tokens
from ..version import __version__
from . import wire
from .config import Limits, parse_keys
from .memory import KvBudget, MemoryReleaser, MiB, default_kv_budget
from .sessions import Session, Sessions
from .verifier import CloudModel
from .wire import WireError

__all__ = ["BackgroundServer", "Limits", "create_app", "guarded_protocol", "parse_keys", "server_config"]

log = logging.getLogger("sectrace.serve")


def create_app(cloud: CloudModel, keys: dict[str, str] | None, limits: Limits | None = None) -> FastAPI:
    """The service. ``keys`` maps client names to bearer keys; ``None`` turns authentication off."""
    limits = limits or Limits()
    limits.check()
    if limits.max_kv_bytes is None:
        limits = dataclasses.replace(limits, max_kv_bytes=default_kv_budget(cloud.device))
    releaser = MemoryReleaser(cloud.device)
    budget = KvBudget(limits.max_kv_bytes, cloud.kv_bytes_per_token, cloud.cache_overhead_bytes, releaser.freed)
    if budget.cost(limits.max_context) > budget.total:
        raise UserError(f"a session of --max-context {limits.max_context} tokens needs "
                        f"{budget.cost(limits.max_context) / MiB:.0f} MiB of KV cache for this model, over the "
                        f"{budget.total / MiB:.0f} MiB allowed; raise --max-kv-memory or lower --max-context")
    sessions = Sessions(limits, budget)
    stats = {"verify_calls": 0, "generate_calls": 0, "rejected": 0}
    # Bodies being received or decoded, in bytes: 64 clients sending 8 MB each would otherwise buffer 512 MB.
    receiving = {"bytes": 0, "limit": max(64 * MiB, 8 * limits.max_body_bytes)}
    decoding = threading.BoundedSemaphore(2)  # a decoded JSON body can be several times its size

    async def evictor():
        while True:
            await asyncio.sleep(max(1.0, limits.idle_s / 4))
            await run_in_threadpool(sessions.evict_idle)

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(evictor())
        yield
        task.cancel()
        releaser.close()

    # No /docs, /redoc or open /openapi.json: the schema is served below, behind the key.
    app = FastAPI(title="sectrace verifier", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None,
                  description="The cloud side of edge–cloud speculative decoding: verifies drafted token blocks. "
                              "Bodies are MessagePack (application/msgpack; token ids may be packed int32 bytes) "
                              "or JSON. Every endpoint except /v1/health needs `Authorization: Bearer KEY`.")
    app.state.sessions = sessions
    app.state.stats = stats
    app.state.limits = limits
    app.state.budget = budget
    app.state.releaser = releaser
    app.state.receiving = receiving
    app.add_middleware(_Activity, releaser=releaser)

    @app.exception_handler(WireError)
    async def _wire_error(request, exc: WireError):
        stats["rejected"] += 1
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect):
        """A client that hangs up mid-upload is routine on the internet: one line, no traceback."""
        peer = request.client
        who = f"{peer.host}:{peer.port}" if peer else "a client"
        why = (f"did not send its body within {limits.body_timeout_s:g} s (connection closed)"
               if request.scope.get("sectrace.timed_out") else "disconnected while sending its request")
        log.info("%s %s (%s %s); nothing was done", who, why, request.method, request.url.path)
        return Response(status_code=400)  # never delivered: the connection is gone

    @app.exception_handler(Exception)
    async def _crash(request, exc: Exception):  # never a traceback to the client; logged here
        log.exception("unexpected error")
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the service logged it"},
                            status_code=500)

    def client_of(request: Request) -> str:
        if keys is None:
            return "anonymous"
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise WireError(401, "send your API key as `Authorization: Bearer KEY`")
        found = None
        for name, key in keys.items():  # compare against every key: the time taken does not say which matched
            if hmac.compare_digest(key.encode(), token.strip().encode()):
                found = name
        if found is None:
            raise WireError(401, "unknown API key")
        return found

    def too_big() -> WireError:
        return WireError(413, f"the body is over this service's limit of {limits.max_body_bytes} bytes")

    async def call_with_body(request: Request, work, *args):
        """Receive the body (refused from Content-Length before reading; cut at the limit without one), then
        run ``work(body_bytes, content_type, *args)`` in a thread: decoding, checks and the model."""
        n = request.headers.get("content-length")
        if n is not None and (not n.isdigit() or int(n) > limits.max_body_bytes):
            raise too_big()
        held = 0
        try:
            chunks = []
            async for chunk in request.stream():
                if held + len(chunk) > limits.max_body_bytes:
                    raise too_big()
                if receiving["bytes"] + len(chunk) > receiving["limit"]:
                    raise WireError(503, "the service is receiving too many large bodies at once; retry shortly")
                receiving["bytes"] += len(chunk)
                held += len(chunk)
                chunks.append(chunk)
            raw = b"".join(chunks)
            del chunks
            return await run_in_threadpool(work, raw, request.headers.get("content-type"), *args)
        finally:
            receiving["bytes"] -= held

    def decode(raw: bytes, ct: str | None, model):
        with decoding:
            return wire.parse(model, wire.decode_body(raw, ct, max_items=limits.max_context))

    def reply(obj: dict, binary: bool, status: int = 200) -> Response:
        data, media = wire.encode_body(obj, binary)
        return Response(data, media_type=media, status_code=status)

    def accept_of(text: str) -> Accept:
        try:
            return Accept.parse(text)
        except PolicyError as exc:
            raise WireError(422, f"accept: {exc}") from None
        except (ValueError, OverflowError):  # rank:inf / rank:nan pass Accept.parse and fail in int()
            raise WireError(422, f"accept: cannot read acceptance rule {text[:40]!r}; write top1, rank:20 or "
                                 "prob:0.1") from None

    def check_session(body) -> tuple[list[int], dict]:
        if len(body.prompt) > limits.max_prompt:
            raise WireError(413, f"prompt: {len(body.prompt)} tokens is over the limit of {limits.max_prompt}")
        cloud.check_ids(body.prompt, "prompt")
        feats = None
        if body.features:
            feats = {k: wire.tensor_from_wire(v, limits.max_feature_elements) for k, v in body.features.items()}
        return list(body.prompt), cloud.kwargs_for(body.mode, feats, body.audio)

    def check_block(draft, context: int):
        if len(draft) > limits.max_draft:
            raise WireError(413, f"draft: {len(draft)} tokens is over the limit of {limits.max_draft} per block")
        cloud.check_ids(draft, "draft")
        if context + len(draft) > limits.max_context:
            raise WireError(413, f"the session would hold {context + len(draft)} tokens, over the limit of "
                                 f"{limits.max_context}; start a new session")

    def commit_after(seq: list[int], body, out: dict) -> list[int]:
        """What the edge commits after this reply (it runs the same protocol): kept tentatively."""
        return seq + committed_tokens(body.draft, out["accepted"], out["top1"], body.bonus)

    @app.get("/v1/health", summary="Liveness (no key needed)")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/info", summary="The model, its vocabulary, the limits and this client's sessions")
    async def info(request: Request):
        who = client_of(request)
        return {"model": cloud.name, "backend": cloud.backend, "vocab": cloud.vocab, "eos": sorted(cloud.eos),
                "device": cloud.device, "threads": cloud.threads, "limits": asdict(limits),
                "memory": {"kv_bytes_per_token": budget.per_token, "cache_overhead_bytes": budget.per_cache,
                           "session_max_bytes": budget.cost(limits.max_context), "kv_budget_bytes": budget.total,
                           "kv_booked_bytes": budget.in_use},
                "client": who, "sessions": sessions.owned_by(who), "version": __version__}

    @app.get("/openapi.json", include_in_schema=False)
    async def schema(request: Request):
        client_of(request)
        return JSONResponse(app.openapi())

    _bodies = {"application/msgpack": {}, "application/json": {}}

    def body_doc(model):
        schema = {"$ref": f"#/components/schemas/{model.__name__}"}
        return {"requestBody": {"required": True, "content": {m: {"schema": schema} for m in _bodies}}}

    def open_work(raw, ct, who, binary):
        body = decode(raw, ct, wire.OpenRequest)
        accept = accept_of(body.accept)
        prompt, kwargs = check_session(body)
        cloud.check_ids(body.committed, "committed")
        check_block(body.draft, len(prompt) + len(body.committed))
        s = sessions.add(who, body.mode, prompt, len(prompt) + len(body.committed) + len(body.draft),
                         lambda: cloud.new_cache(kwargs))
        with s.busy:
            try:
                out = cloud.verify(s.lm, prompt + list(body.committed), list(body.draft), accept)
            except BaseException:
                sessions.remove(who, s.id)
                raise
            s.seq = commit_after(list(body.committed), body, out)
            s.last_used = time.monotonic()
        return reply({"session": s.id, **out}, binary, 201)

    @app.post("/v1/sessions", summary="Open a stateful session and verify its first block",
              openapi_extra=body_doc(wire.OpenRequest), status_code=201)
    async def open_session(request: Request):
        who = client_of(request)
        r = await call_with_body(request, open_work, who, _binary(request))
        stats["verify_calls"] += 1
        return r

    def verify_work(raw, ct, s: Session, binary):
        body = decode(raw, ct, wire.VerifyRequest)
        accept = accept_of(body.accept)
        if not s.busy.acquire(blocking=False):
            raise WireError(409, "this session is already verifying a block; send one block at a time")
        try:
            lm = s.lm
            if lm is None:
                raise WireError(404, "no such session (it was closed while this call waited); open a new one "
                                     "with POST /v1/sessions")
            if body.base > len(s.seq):
                raise WireError(409, f"base {body.base} is past the {len(s.seq)} tokens this session holds; "
                                     "send base <= the tokens the cloud confirmed")
            cloud.check_ids(body.new, "new")
            seq = s.seq[: body.base] + list(body.new)
            check_block(body.draft, len(s.prompt) + len(seq))
            s.booking.grow(len(s.prompt) + len(seq) + len(body.draft))
            out = cloud.verify(lm, s.prompt + seq, list(body.draft), accept)
            s.seq = commit_after(seq, body, out)
            s.last_used = time.monotonic()
        finally:
            s.busy.release()
        return reply(out, binary)

    @app.post("/v1/sessions/{sid}/verify", summary="Verify the next block of a session",
              openapi_extra=body_doc(wire.VerifyRequest))
    async def verify(sid: str, request: Request):
        who = client_of(request)
        s = sessions.get(who, sid)
        r = await call_with_body(request, verify_work, s, _binary(request))
        stats["verify_calls"] += 1
        return r

    @app.delete("/v1/sessions/{sid}", summary="Close a session (frees its cache)", status_code=204)
    async def close(sid: str, request: Request):
        who = client_of(request)
        sessions.remove(who, sid)
        return Response(status_code=204)

    def stateless_work(raw, ct, binary):
        body = decode(raw, ct, wire.StatelessRequest)
        accept = accept_of(body.accept)
        prompt, kwargs = check_session(body)
        cloud.check_ids(body.committed, "committed")
        check_block(body.draft, len(prompt) + len(body.committed))
        booking = budget.book(len(prompt) + len(body.committed) + len(body.draft))
        try:
            out = cloud.verify(cloud.new_cache(kwargs), prompt + list(body.committed), list(body.draft), accept)
        finally:
            booking.free()
        return reply(out, binary)

    @app.post("/v1/verify", summary="Verify a block without a session (stateless: everything sent, nothing kept)",
              openapi_extra=body_doc(wire.StatelessRequest))
    async def verify_stateless(request: Request):
        client_of(request)
        r = await call_with_body(request, stateless_work, _binary(request))
        stats["verify_calls"] += 1
        return r

    def generate_work(raw, ct):
        body = decode(raw, ct, wire.GenerateRequest)
        if body.max_new_tokens > limits.max_new_tokens:
            raise WireError(413, f"max_new_tokens {body.max_new_tokens} is over the limit of {limits.max_new_tokens}")
        prompt, kwargs = check_session(body)
        if len(prompt) + body.max_new_tokens > limits.max_context:
            raise WireError(413, f"prompt plus max_new_tokens is over the context limit of {limits.max_context}")
        booking = budget.book(len(prompt) + body.max_new_tokens)
        lm = cloud.new_cache(kwargs)
        gone = threading.Event()

        def records():
            try:
                for tok, prob, eos in cloud.generate(lm, prompt, body.max_new_tokens, gone.is_set):
                    yield wire.TOKEN_RECORD.pack(tok, prob, eos)
            finally:
                gone.set()
                booking.free()

        it = records()
        weakref.finalize(it, booking.free)  # a stream never started (client gone first) frees its booking too
        return it

    @app.post("/v1/generate", summary="Cloud-only decoding, streamed: 9-byte records (int32 id, float32 prob, "
                                      "bool end) as application/x-sectrace-tokens",
              openapi_extra=body_doc(wire.GenerateRequest))
    async def generate(request: Request):
        client_of(request)
        records = await call_with_body(request, generate_work)
        stats["generate_calls"] += 1
        return StreamingResponse(records, media_type=wire.TOKEN_STREAM)

    # The schema names every body model even though the handlers read raw bodies (to take MessagePack).
    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for m in (wire.OpenRequest, wire.VerifyRequest, wire.StatelessRequest, wire.GenerateRequest):
            s = m.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(s.pop("$defs", {}))
            comps[m.__name__] = s
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
    return app


def _binary(request: Request) -> bool:
    """Answer in MessagePack when the request came in it or asks for it."""
    ct = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    return ct in (wire.MSGPACK, "application/x-msgpack", "application/vnd.msgpack") or \
        wire.MSGPACK in request.headers.get("accept", "")


class _Activity:
    """ASGI middleware: counts requests in flight, so freed memory is released only when none is."""

    def __init__(self, app, releaser: MemoryReleaser):
        self.app, self.releaser = app, releaser

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.releaser.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.releaser.leave()


_TIMEOUT_BODY = b'{"error":"the request headers did not arrive in time; connection closed"}'
_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


def guarded_protocol(header_timeout_s: float, body_timeout_s: float):
    """uvicorn's h11 protocol with deadlines on receiving a request: its headers within ``header_timeout_s``
    of its first byte (or of the connection, for a fresh one), its body within ``body_timeout_s`` after.

    Why in the protocol: uvicorn has no such timeout (``timeout_keep_alive`` only covers the idle time
    between requests and is reset by every byte), and ASGI middleware runs only once the headers are
    in, so a client trickling a header a byte at a time held its connection forever (slowloris). The
    deadline is absolute, not per byte. A connection past it is closed; one still in its headers is
    told 408 first. The h11 protocol is used even where httptools is installed."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _timer = None
        _phase = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm("headers")

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _follow(self) -> None:
            if self.transport.is_closing():
                return self._disarm()
            state = self.conn.their_state
            if state is h11.IDLE:
                # Part of a request's head is buffered, or nothing is and no keep-alive timer watches the
                # connection (uvicorn cancels it on every byte, e.g. of a body it discards after an early reply).
                if self.conn.trailing_data[0] or self.timeout_keep_alive_task is None:
                    self._arm("headers")
                else:
                    self._disarm()
            elif state is h11.SEND_BODY:
                self._arm("body")
            else:
                self._disarm()

        def _arm(self, phase: str) -> None:
            if self._phase == phase:
                return  # absolute deadline: not moved by further bytes
            self._disarm()
            self._phase = phase
            delay = header_timeout_s if phase == "headers" else body_timeout_s
            self._timer = self.loop.call_later(delay, self._expired, phase)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._phase = None, None

        def _expired(self, phase: str) -> None:
            self._timer, self._phase = None, None
            if self.transport.is_closing():
                return
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            cycle = self.cycle
            if phase == "headers":
                log.info("%s did not send its request headers within %g s; connection closed", peer, header_timeout_s)
                self.transport.write(_REQUEST_TIMEOUT)
            elif cycle is not None and not cycle.response_complete:
                cycle.scope["sectrace.timed_out"] = True  # the handler waiting for the body logs it
            else:
                log.info("%s did not send its request body within %g s; connection closed", peer, body_timeout_s)
            self.transport.close()

    return GuardedH11Protocol


def server_config(app, host: str, port: int, timeout_keep_alive: int = 300, log_level: str = "warning"):
    """The uvicorn configuration the service runs under (read deadlines from ``app.state.limits``)."""
    import uvicorn

    limits = app.state.limits
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                          timeout_keep_alive=timeout_keep_alive,
                          http=guarded_protocol(limits.header_timeout_s, limits.body_timeout_s))


class BackgroundServer:
    """uvicorn serving ``app`` from a thread of this process, on an ephemeral loopback port (tests, demos)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.app, self.host, self.port = app, host, port
        self.server = None
        self._thread = None

    def __enter__(self):
        import uvicorn

        # uvicorn binds the port itself: sockets handed in from outside lose TCP_NODELAY on accepted connections
        # (every reply then waits ~40 ms for a delayed ACK).
        self.server = uvicorn.Server(server_config(self.app, self.host, self.port, timeout_keep_alive=60))
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the service did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self._thread.join(timeout=10)
