"""Request bodies in, replies out: bounded receiving, decoding in a thread, MessagePack or JSON replies.

Why not a FastAPI body parameter or a dependency: bodies are MessagePack (FastAPI reads JSON), an
oversized one must be refused from its Content-Length before a byte is read, and the bytes must stay
counted against ``ServiceState.receiving`` until the work that decodes them has finished, in the one
thread hop that also runs the model.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from . import wire
from .state import ServiceState
from .wire import WireError


def too_big(st: ServiceState) -> WireError:
    return WireError(413, f"the body is over this service's limit of {st.limits.max_body_bytes} bytes")


async def receive_then_run(request: Request, st: ServiceState, work, *args):
    """Receive the body (refused from Content-Length before reading; cut at the limit without one), then
    run ``work(body_bytes, content_type, *args)`` in a thread: decoding, checks and the model."""
    n = request.headers.get("content-length")
    if n is not None and (not n.isdigit() or int(n) > st.limits.max_body_bytes):
        raise too_big(st)
    receiving = st.receiving
    held = 0
    try:
        chunks = []
        async for chunk in request.stream():
            if held + len(chunk) > st.limits.max_body_bytes:
                raise too_big(st)
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


def decode(st: ServiceState, raw: bytes, ct: str | None, model):
    """The body as ``model`` (a wire request); a few at a time, as a decoded body can be several times its size."""
    with st.decoding:
        return wire.parse(model, wire.decode_body(raw, ct, max_items=st.limits.max_context))


def wants_binary(request: Request) -> bool:
    """Answer in MessagePack when the request came in it or asks for it."""
    ct = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    return ct in (wire.MSGPACK, "application/x-msgpack", "application/vnd.msgpack") or \
        wire.MSGPACK in request.headers.get("accept", "")


def reply(obj: dict, binary: bool, status: int = 200) -> Response:
    data, media = wire.encode_body(obj, binary)
    return Response(data, media_type=media, status_code=status)


#: The request body of a route in the OpenAPI schema: the handlers read raw bodies, so FastAPI cannot see it.
BODY_TYPES = ("application/msgpack", "application/json")


def body_doc(model) -> dict:
    """``openapi_extra`` naming ``model`` as the route's body in both media types."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {m: {"schema": schema} for m in BODY_TYPES}}}
