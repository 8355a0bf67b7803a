"""The service's endpoints, one router per concern: health and info, sessions, stateless verify, generate.

Each handler is the async edge of the call (auth and session lookup as dependencies, the body received
with its limits, the counters); the work behind it (decoding, checks, bookings, the model) is a plain
function run in a worker thread, so the event loop and ``/v1/health`` stay responsive under load. The
draft/verify rules live in :mod:`sectrace.protocol`; the service only keeps what the edge commits.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import asdict

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..protocol import committed_tokens
from ..version import __version__
from . import wire
from .bodies import body_doc, decode, receive_then_run, reply, wants_binary
from .checks import accept_of, check_block, generation_inputs, session_inputs
from .sessions import Session
from .state import Client, OwnSession, ServiceState, State, client_of
from .wire import WireError

# --- health and info -----------------------------------------------------------------------------------------------

meta = APIRouter()


@meta.get("/v1/health", summary="Liveness (no key needed)")
async def health():
    return {"status": "ok"}


@meta.get("/v1/info", summary="The model, its vocabulary, the limits and this client's sessions")
async def info(who: Client, st: State):
    cloud, budget, limits = st.cloud, st.budget, st.limits
    return {"model": cloud.name, "backend": cloud.backend, "vocab": cloud.vocab, "eos": sorted(cloud.eos),
            "device": cloud.device, "threads": cloud.threads, "limits": asdict(limits),
            "memory": {"kv_bytes_per_token": budget.per_token, "cache_overhead_bytes": budget.per_cache,
                       "session_max_bytes": budget.cost(limits.max_context), "kv_budget_bytes": budget.total,
                       "kv_booked_bytes": budget.in_use},
            "client": who, "sessions": st.sessions.owned_by(who), "version": __version__}


@meta.get("/openapi.json", include_in_schema=False, dependencies=[Depends(client_of)])
async def schema(request: Request):
    """The schema, behind the key like everything but health (no interactive docs are served)."""
    return JSONResponse(request.app.openapi())


# --- sessions ------------------------------------------------------------------------------------------------------

sessions = APIRouter(dependencies=[Depends(client_of)])


def committed_after(seq: list[int], body, out: dict) -> list[int]:
    """What the edge commits after this reply (it runs the same protocol): kept tentatively."""
    return seq + committed_tokens(body.draft, out["accepted"], out["top1"].__getitem__, body.bonus)


def open_and_verify(raw: bytes, ct: str | None, st: ServiceState, who: str, binary: bool) -> Response:
    """Open a session (its first pass booked before anything is allocated) and verify its first block; a
    session whose first verification fails is closed again."""
    body = decode(st, raw, ct, wire.OpenRequest)
    accept = accept_of(body.accept)
    prompt, kwargs = session_inputs(st, body)
    st.cloud.check_ids(body.committed, "committed")
    check_block(st, body.draft, len(prompt) + len(body.committed))
    s = st.sessions.add(who, body.mode, prompt, len(prompt) + len(body.committed) + len(body.draft),
                        lambda: st.cloud.new_cache(kwargs))
    with s.busy:
        try:
            out = st.cloud.verify(s.lm, prompt + list(body.committed), list(body.draft), accept)
        except BaseException:
            st.sessions.remove(who, s.id)
            raise
        s.seq = committed_after(list(body.committed), body, out)
        s.last_used = time.monotonic()
    return reply({"session": s.id, **out}, binary, 201)


@sessions.post("/v1/sessions", summary="Open a stateful session and verify its first block",
               openapi_extra=body_doc(wire.OpenRequest), status_code=201)
async def open_session(request: Request, who: Client, st: State):
    r = await receive_then_run(request, st, open_and_verify, st, who, wants_binary(request))
    st.stats["verify_calls"] += 1
    return r


def verify_next_block(raw: bytes, ct: str | None, st: ServiceState, s: Session, binary: bool) -> Response:
    """Verify a session's next block: one block at a time per session (409 for a second), from ``base``, the
    tokens of what the cloud holds that the edge confirms."""
    body = decode(st, raw, ct, wire.VerifyRequest)
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
        st.cloud.check_ids(body.new, "new")
        seq = s.seq[: body.base] + list(body.new)
        check_block(st, body.draft, len(s.prompt) + len(seq))
        s.booking.grow(len(s.prompt) + len(seq) + len(body.draft))
        out = st.cloud.verify(lm, s.prompt + seq, list(body.draft), accept)
        s.seq = committed_after(seq, body, out)
        s.last_used = time.monotonic()
    finally:
        s.busy.release()
    return reply(out, binary)


@sessions.post("/v1/sessions/{sid}/verify", summary="Verify the next block of a session",
               openapi_extra=body_doc(wire.VerifyRequest))
async def verify(request: Request, s: OwnSession, st: State):
    r = await receive_then_run(request, st, verify_next_block, st, s, wants_binary(request))
    st.stats["verify_calls"] += 1
    return r


@sessions.delete("/v1/sessions/{sid}", summary="Close a session (frees its cache)", status_code=204)
async def close(sid: str, who: Client, st: State):
    st.sessions.remove(who, sid)
    return Response(status_code=204)


# --- stateless verify ----------------------------------------------------------------------------------------------

stateless = APIRouter(dependencies=[Depends(client_of)])


def verify_once(raw: bytes, ct: str | None, st: ServiceState, binary: bool) -> Response:
    """Verify a block from everything the request sends, in a cache booked and freed within the call."""
    body = decode(st, raw, ct, wire.StatelessRequest)
    accept = accept_of(body.accept)
    prompt, kwargs = session_inputs(st, body)
    st.cloud.check_ids(body.committed, "committed")
    check_block(st, body.draft, len(prompt) + len(body.committed))
    booking = st.budget.book(len(prompt) + len(body.committed) + len(body.draft))
    try:
        out = st.cloud.verify(st.cloud.new_cache(kwargs), prompt + list(body.committed), list(body.draft), accept)
    finally:
        booking.free()
    return reply(out, binary)


@stateless.post("/v1/verify", summary="Verify a block without a session (stateless: everything sent, nothing kept)",
                openapi_extra=body_doc(wire.StatelessRequest))
async def verify_stateless(request: Request, st: State):
    r = await receive_then_run(request, st, verify_once, st, wants_binary(request))
    st.stats["verify_calls"] += 1
    return r


# --- generate ------------------------------------------------------------------------------------------------------

generation = APIRouter(dependencies=[Depends(client_of)])


def start_generation(raw: bytes, ct: str | None, st: ServiceState):
    """Book the whole decoding's cache, then hand back the stream of token records (not yet started)."""
    body = decode(st, raw, ct, wire.GenerateRequest)
    prompt, kwargs = generation_inputs(st, body)
    booking = st.budget.book(len(prompt) + body.max_new_tokens)
    lm = st.cloud.new_cache(kwargs)
    it = token_records(st, lm, prompt, body.max_new_tokens, booking)
    weakref.finalize(it, booking.free)  # a stream never started (client gone first) frees its booking too
    return it


def token_records(st: ServiceState, lm, prompt: list[int], max_new: int, booking):
    """The decoded tokens as wire records; stops the model once the stream is closed, and frees the booking."""
    gone = threading.Event()
    try:
        for tok, prob, eos in st.cloud.generate(lm, prompt, max_new, gone.is_set):
            yield wire.TOKEN_RECORD.pack(tok, prob, eos)
    finally:
        gone.set()
        booking.free()


@generation.post("/v1/generate", summary="Cloud-only decoding, streamed: 9-byte records (int32 id, float32 prob, "
                                         "bool end) as application/x-sectrace-tokens",
                 openapi_extra=body_doc(wire.GenerateRequest))
async def generate(request: Request, st: State):
    records = await receive_then_run(request, st, start_generation, st)
    st.stats["generate_calls"] += 1
    return StreamingResponse(records, media_type=wire.TOKEN_STREAM)


ROUTERS = (meta, sessions, stateless, generation)
