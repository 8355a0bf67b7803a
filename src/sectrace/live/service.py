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

Layout (FastAPI's "bigger applications"): this module assembles the app and runs it; ``config`` holds
the limits and keys, ``state`` the ServiceState on ``app.state.service`` and the dependencies (auth,
session lookup), ``routes`` one router per concern, ``bodies`` receiving and replying, ``checks`` the
per-request limits, ``sessions`` and ``memory`` the bookkeeping, ``deadlines`` the read deadlines.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ..version import __version__
from . import routes, wire
from .config import Limits, parse_keys
from .memory import MemoryReleaser
from .state import ServiceState
from .verifier import CloudModel
from .wire import WireError

__all__ = ["BackgroundServer", "Limits", "ServiceState", "create_app", "guarded_protocol", "parse_keys",
           "server_config"]

log = logging.getLogger("sectrace.serve")

_DESCRIPTION = ("The cloud side of edge–cloud speculative decoding: verifies drafted token blocks. "
                "Bodies are MessagePack (application/msgpack; token ids may be packed int32 bytes) "
                "or JSON. Every endpoint except /v1/health needs `Authorization: Bearer KEY`.")


def create_app(cloud: CloudModel, keys: dict[str, str] | None, limits: Limits | None = None) -> FastAPI:
    """The service. ``keys`` maps client names to bearer keys; ``None`` turns authentication off."""
    st = ServiceState.build(cloud, keys, limits or Limits())
    # No /docs, /redoc or open /openapi.json: the schema is served by routes.schema, behind the key.
    app = FastAPI(title="sectrace verifier", version=__version__, lifespan=_lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, description=_DESCRIPTION)
    app.state.service = st
    # The parts tests, server_config and operators read directly (the same objects as on the state).
    for name in ("sessions", "stats", "limits", "budget", "releaser", "receiving"):
        setattr(app.state, name, getattr(st, name))
    app.add_middleware(_Activity, releaser=st.releaser)
    app.add_exception_handler(WireError, _wire_error)
    app.add_exception_handler(ClientDisconnect, _gone)
    app.add_exception_handler(Exception, _crash)
    for router in routes.ROUTERS:
        app.include_router(router)
    app.openapi = lambda: _openapi(app)
    return app


async def _evict_idle(st: ServiceState):
    """Close idle sessions every quarter of the idle time (at most once a second), off the event loop."""
    while True:
        await asyncio.sleep(max(1.0, st.limits.idle_s / 4))
        await run_in_threadpool(st.sessions.evict_idle)


@asynccontextmanager
async def _lifespan(app: FastAPI):
    """The evictor runs while the service does; the memory releaser's thread ends with it."""
    st: ServiceState = app.state.service
    task = asyncio.create_task(_evict_idle(st))
    yield
    task.cancel()
    st.releaser.close()


async def _wire_error(request: Request, exc: WireError):
    """A refusal: its status and one sentence under ``error`` (401 names the scheme to use)."""
    request.app.state.service.stats["rejected"] += 1
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


async def _gone(request: Request, exc: ClientDisconnect):
    """A client that hangs up mid-upload is routine on the internet: one line, no traceback."""
    peer = request.client
    who = f"{peer.host}:{peer.port}" if peer else "a client"
    why = (f"did not send its body within {request.app.state.service.limits.body_timeout_s:g} s (connection closed)"
           if request.scope.get("sectrace.timed_out") else "disconnected while sending its request")
    log.info("%s %s (%s %s); nothing was done", who, why, request.method, request.url.path)
    return Response(status_code=400)  # never delivered: the connection is gone


async def _crash(request: Request, exc: Exception):
    """Never a traceback to the client; logged here."""
    log.exception("unexpected error")
    return JSONResponse({"error": f"internal error ({type(exc).__name__}); the service logged it"},
                        status_code=500)


def _openapi(app: FastAPI) -> dict:
    """The schema names every body model even though the handlers read raw bodies (to take MessagePack)."""
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


def guarded_protocol(header_timeout_s: float, body_timeout_s: float):
    """uvicorn's h11 protocol with deadlines on receiving a request: its headers within ``header_timeout_s``
    of its first byte (or of the connection, for a fresh one), its body within ``body_timeout_s`` after.

    Why in the protocol: uvicorn has no such timeout (``timeout_keep_alive`` only covers the idle time
    between requests and is reset by every byte), and ASGI middleware runs only once the headers are
    in, so a client trickling a header a byte at a time held its connection forever (slowloris). The
    deadline is absolute, not per byte. A connection past it is closed; one still in its headers is
    told 408 first. The h11 protocol is used even where httptools is installed (see live/deadlines.py)."""
    from .deadlines import with_deadlines

    return with_deadlines(header_timeout_s, body_timeout_s)


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
