"""What the service's routes share (one :class:`ServiceState` on ``app.state.service``) and the FastAPI
dependencies that hand it out: the state, the calling client, the client's session.

Why app.state and dependencies rather than closures in ``create_app``: the routes become plain module
functions, each short and testable by name, and the counters and bookings stay readable from outside
(tests, an operator's debugger) in one place. The dependencies are ``async`` so they run on the event
loop like the handlers, never queued behind model work in the thread pool.
"""

from __future__ import annotations

import dataclasses
import hmac
import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from ..errors import UserError
from .config import Limits
from .memory import KvBudget, MemoryReleaser, MiB, default_kv_budget
from .sessions import Session, Sessions
from .verifier import CloudModel
from .wire import WireError


def _stats() -> dict:
    return {"verify_calls": 0, "generate_calls": 0, "rejected": 0}


@dataclass
class ServiceState:
    """The model, the keys (None: no authentication), the limits and the bookkeeping every request touches."""

    cloud: CloudModel
    keys: dict[str, str] | None
    limits: Limits
    releaser: MemoryReleaser
    budget: KvBudget
    sessions: Sessions
    #: Bodies being received or decoded, in bytes: 64 clients sending 8 MB each would otherwise buffer 512 MB.
    receiving: dict
    stats: dict = field(default_factory=_stats)
    #: Bodies decoded at once: a decoded JSON body can be several times its size.
    decoding: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(2))

    @classmethod
    def build(cls, cloud: CloudModel, keys: dict[str, str] | None, limits: Limits) -> ServiceState:
        """Check the limits, resolve the KV budget (``max_kv_bytes=None``: from the machine) and refuse a budget
        that could not hold even one session of the longest context."""
        limits.check()
        if limits.max_kv_bytes is None:
            limits = dataclasses.replace(limits, max_kv_bytes=default_kv_budget(cloud.device))
        releaser = MemoryReleaser(cloud.device)
        budget = KvBudget(limits.max_kv_bytes, cloud.kv_bytes_per_token, cloud.cache_overhead_bytes, releaser.freed)
        if budget.cost(limits.max_context) > budget.total:
            raise UserError(f"a session of --max-context {limits.max_context} tokens needs "
                            f"{budget.cost(limits.max_context) / MiB:.0f} MiB of KV cache for this model, over the "
                            f"{budget.total / MiB:.0f} MiB allowed; raise --max-kv-memory or lower --max-context")
        receiving = {"bytes": 0, "limit": max(64 * MiB, 8 * limits.max_body_bytes)}
        return cls(cloud, keys, limits, releaser, budget, Sessions(limits, budget), receiving)


async def service_of(request: Request) -> ServiceState:
    """The app's state (a dependency, so routes name what they need instead of reaching into ``app.state``)."""
    return request.app.state.service


State = Annotated[ServiceState, Depends(service_of)]


async def client_of(request: Request, st: State) -> str:
    """The client whose bearer key this request carries ("anonymous" without authentication), or 401."""
    if st.keys is None:
        return "anonymous"
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise WireError(401, "send your API key as `Authorization: Bearer KEY`")
    found = None
    for name, key in st.keys.items():  # compare against every key: the time taken does not say which matched
        if hmac.compare_digest(key.encode(), token.strip().encode()):
            found = name
    if found is None:
        raise WireError(401, "unknown API key")
    return found


Client = Annotated[str, Depends(client_of)]


async def session_of(sid: str, who: Client, st: State) -> Session:
    """The session ``sid`` if this client owns it; 404 otherwise (another client's session does not exist)."""
    return st.sessions.get(who, sid)


OwnSession = Annotated[Session, Depends(session_of)]
