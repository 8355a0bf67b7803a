"""`sectrace serve`: the cloud verifier as an HTTP service (FastAPI on uvicorn).

Why these choices: FastAPI gives an OpenAPI schema for free (clients and fuzzers are written
against it) and uvicorn keeps HTTP/1.1 connections alive, so an edge pays the connection
set-up once per run, not once per block. Bodies are MessagePack (token ids packed as int32);
JSON is accepted for tools.

Security model: every call but ``/v1/health`` needs a bearer key; a key is a client, and a
session belongs to the client that opened it (another client gets 404, as if it did not
exist). Limits bound draft length, context, body size, sessions per client and in all, and
idle sessions are evicted, so a misbehaving client can exhaust neither memory nor the model.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..errors import UserError
from ..protocol import Accept, PolicyError, committed_tokens
from . import wire
from .verifier import CloudModel
from .wire import WireError

log = logging.getLogger("sectrace.serve")


@dataclass
class Limits:
    """What one request and one client may ask for (each breach is a clear 4xx)."""

    max_draft: int = 32
    max_prompt: int = 4096
    max_context: int = 8192  # prompt + committed + draft tokens in one session
    max_new_tokens: int = 512  # cloud-only decoding
    max_body_bytes: int = 8 * 2**20
    max_feature_elements: int = 2 * 2**20
    sessions_per_client: int = 16
    max_sessions: int = 256
    idle_s: float = 120.0


@dataclass
class _Session:
    id: str
    owner: str
    mode: str
    prompt: list[int]
    lm: object
    seq: list[int] = field(default_factory=list)  # committed caption tokens the cloud holds (tentatively extended)
    last_used: float = field(default_factory=time.monotonic)
    busy: threading.Lock = field(default_factory=threading.Lock)


class Sessions:
    """Stateful sessions by id, owned by a client; bounded and evicted when idle."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._by_id: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self.evicted = 0

    def __len__(self):
        return len(self._by_id)

    def evict_idle(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        with self._lock:
            old = [s for s in self._by_id.values() if now - s.last_used > self.limits.idle_s and not s.busy.locked()]
            for s in old:
                del self._by_id[s.id]
            self.evicted += len(old)
            return len(old)

    def add(self, owner: str, mode: str, prompt: list[int], lm) -> _Session:
        self.evict_idle()
        with self._lock:
            mine = sum(1 for s in self._by_id.values() if s.owner == owner)
            if mine >= self.limits.sessions_per_client:
                raise WireError(429, f"this client already holds {mine} sessions (limit "
                                     f"{self.limits.sessions_per_client}); close finished ones with DELETE "
                                     "/v1/sessions/{id} or wait for idle ones to expire")
            if len(self._by_id) >= self.limits.max_sessions:
                raise WireError(503, "the service holds its maximum number of sessions; retry shortly")
            s = _Session(secrets.token_urlsafe(18), owner, mode, prompt, lm)
            self._by_id[s.id] = s
            return s

    def get(self, owner: str, sid: str) -> _Session:
        with self._lock:
            s = self._by_id.get(sid)
        # bytes: compare_digest raises TypeError on str with non-ASCII characters (a client named "zoë")
        if s is None or not hmac.compare_digest(s.owner.encode(), owner.encode()):
            raise WireError(404, "no such session (it was closed, expired after being idle, or is not yours); "
                                 "open a new one with POST /v1/sessions")
        return s

    def remove(self, owner: str, sid: str) -> None:
        s = self.get(owner, sid)
        with self._lock:
            self._by_id.pop(s.id, None)

    def owned_by(self, owner: str) -> int:
        with self._lock:
            return sum(1 for s in self._by_id.values() if s.owner == owner)


def parse_keys(text: str) -> dict[str, str]:
    """Key file lines: ``NAME KEY`` or just ``KEY`` (named client1, client2, …); ``#`` starts a comment."""
    keys: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            raise UserError(f"key file line {n}: write NAME KEY or KEY")
        name, key = (parts if len(parts) == 2 else (f"client{len(keys) + 1}", parts[0]))
        if len(key) < 16:
            raise UserError(f"key file line {n}: a key must be at least 16 characters (use e.g. "
                            "python -c 'import secrets; print(secrets.token_urlsafe(24))')")
        if name in keys:
            raise UserError(f"key file line {n}: client name {name!r} appears twice")
        keys[name] = key
    if not keys:
        raise UserError("the key file holds no keys; write one KEY (or NAME KEY) per line")
    return keys


def create_app(cloud: CloudModel, keys: dict[str, str] | None, limits: Limits | None = None) -> FastAPI:
    """The service. ``keys`` maps client names to bearer keys; ``None`` turns authentication off."""
    limits = limits or Limits()
    sessions = Sessions(limits)
    stats = {"verify_calls": 0, "generate_calls": 0, "rejected": 0}

    async def evictor():
        while True:
            await asyncio.sleep(max(1.0, limits.idle_s / 4))
            sessions.evict_idle()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(evictor())
        yield
        task.cancel()

    app = FastAPI(title="sectrace verifier", version=__version__, lifespan=lifespan,
                  description="The cloud side of edge–cloud speculative decoding: verifies drafted token blocks. "
                              "Bodies are MessagePack (application/msgpack; token ids may be packed int32 bytes) "
                              "or JSON. Every endpoint except /v1/health needs `Authorization: Bearer KEY`.")
    app.state.sessions = sessions
    app.state.stats = stats
    app.state.limits = limits

    @app.exception_handler(WireError)
    async def _wire_error(request, exc: WireError):
        stats["rejected"] += 1
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

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

    async def body_of(request: Request, model):
        n = request.headers.get("content-length")
        if n is not None and (not n.isdigit() or int(n) > limits.max_body_bytes):
            raise WireError(413, f"the body is over this service's limit of {limits.max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise WireError(413, f"the body is over this service's limit of {limits.max_body_bytes} bytes")
            chunks.append(chunk)
        ct = request.headers.get("content-type")
        return wire.parse(model, wire.decode_body(b"".join(chunks), ct)), _binary(ct, request)

    def reply(obj: dict, binary: bool) -> Response:
        data, media = wire.encode_body(obj, binary)
        return Response(data, media_type=media)

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
                "client": who, "sessions": sessions.owned_by(who), "version": __version__}

    _bodies = {"application/msgpack": {}, "application/json": {}}

    def body_doc(model):
        schema = {"$ref": f"#/components/schemas/{model.__name__}"}
        return {"requestBody": {"required": True, "content": {m: {"schema": schema} for m in _bodies}}}

    @app.post("/v1/sessions", summary="Open a stateful session and verify its first block",
              openapi_extra=body_doc(wire.OpenRequest), status_code=201)
    async def open_session(request: Request):
        who = client_of(request)
        body, binary = await body_of(request, wire.OpenRequest)
        accept = accept_of(body.accept)
        prompt, kwargs = check_session(body)
        cloud.check_ids(body.committed, "committed")
        check_block(body.draft, len(prompt) + len(body.committed))
        s = sessions.add(who, body.mode, prompt, cloud.new_cache(kwargs))
        with s.busy:
            try:
                out = await run_in_threadpool(cloud.verify, s.lm, prompt + list(body.committed), list(body.draft),
                                              accept)
            except BaseException:
                sessions.remove(who, s.id)
                raise
            s.seq = commit_after(list(body.committed), body, out)
            s.last_used = time.monotonic()
        stats["verify_calls"] += 1
        r = reply({"session": s.id, **out}, binary)
        r.status_code = 201
        return r

    @app.post("/v1/sessions/{sid}/verify", summary="Verify the next block of a session",
              openapi_extra=body_doc(wire.VerifyRequest))
    async def verify(sid: str, request: Request):
        who = client_of(request)
        s = sessions.get(who, sid)
        body, binary = await body_of(request, wire.VerifyRequest)
        accept = accept_of(body.accept)
        if not s.busy.acquire(blocking=False):
            raise WireError(409, "this session is already verifying a block; send one block at a time")
        try:
            if body.base > len(s.seq):
                raise WireError(409, f"base {body.base} is past the {len(s.seq)} tokens this session holds; "
                                     "send base <= the tokens the cloud confirmed")
            cloud.check_ids(body.new, "new")
            seq = s.seq[: body.base] + list(body.new)
            check_block(body.draft, len(s.prompt) + len(seq))
            out = await run_in_threadpool(cloud.verify, s.lm, s.prompt + seq, list(body.draft), accept)
            s.seq = commit_after(seq, body, out)
            s.last_used = time.monotonic()
        finally:
            s.busy.release()
        stats["verify_calls"] += 1
        return reply(out, binary)

    @app.delete("/v1/sessions/{sid}", summary="Close a session (frees its cache)", status_code=204)
    async def close(sid: str, request: Request):
        who = client_of(request)
        sessions.remove(who, sid)
        return Response(status_code=204)

    @app.post("/v1/verify", summary="Verify a block without a session (stateless: everything sent, nothing kept)",
              openapi_extra=body_doc(wire.StatelessRequest))
    async def verify_stateless(request: Request):
        client_of(request)
        body, binary = await body_of(request, wire.StatelessRequest)
        accept = accept_of(body.accept)
        prompt, kwargs = check_session(body)
        cloud.check_ids(body.committed, "committed")
        check_block(body.draft, len(prompt) + len(body.committed))
        out = await run_in_threadpool(cloud.verify, cloud.new_cache(kwargs), prompt + list(body.committed),
                                      list(body.draft), accept)
        stats["verify_calls"] += 1
        return reply(out, binary)

    @app.post("/v1/generate", summary="Cloud-only decoding, streamed: 9-byte records (int32 id, float32 prob, "
                                      "bool end) as application/x-sectrace-tokens",
              openapi_extra=body_doc(wire.GenerateRequest))
    async def generate(request: Request):
        client_of(request)
        body, _ = await body_of(request, wire.GenerateRequest)
        if body.max_new_tokens > limits.max_new_tokens:
            raise WireError(413, f"max_new_tokens {body.max_new_tokens} is over the limit of {limits.max_new_tokens}")
        prompt, kwargs = check_session(body)
        if len(prompt) + body.max_new_tokens > limits.max_context:
            raise WireError(413, f"prompt plus max_new_tokens is over the context limit of {limits.max_context}")
        lm = cloud.new_cache(kwargs)
        gone = threading.Event()
        stats["generate_calls"] += 1

        def records():
            try:
                for tok, prob, eos in cloud.generate(lm, prompt, body.max_new_tokens, gone.is_set):
                    yield wire.TOKEN_RECORD.pack(tok, prob, eos)
            finally:
                gone.set()

        return StreamingResponse(records(), media_type=wire.TOKEN_STREAM)

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


def _binary(content_type: str | None, request: Request) -> bool:
    """Answer in MessagePack when the request came in it or asks for it."""
    ct = (content_type or "").split(";")[0].strip().lower()
    return ct in (wire.MSGPACK, "application/x-msgpack", "application/vnd.msgpack") or \
        wire.MSGPACK in request.headers.get("accept", "")


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
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning",
                                                    lifespan="on", timeout_keep_alive=60))
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
