"""The service's stateful sessions: a verifier KV cache per utterance, owned by the client that opened it."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

from .config import Limits
from .memory import Booking, KvBudget
from .wire import WireError


@dataclass
class Session:
    """One open session: its prompt, its cache (``lm``, None once closed) and what the cloud holds of the caption."""

    id: str
    owner: str
    mode: str
    prompt: list[int]
    lm: object
    booking: Booking
    seq: list[int] = field(default_factory=list)  # committed caption tokens the cloud holds (tentatively extended)
    last_used: float = field(default_factory=time.monotonic)
    busy: threading.Lock = field(default_factory=threading.Lock)


class Sessions:
    """Stateful sessions by id, owned by a client; bounded in number and memory, evicted when idle."""

    def __init__(self, limits: Limits, budget: KvBudget):
        self.limits = limits
        self.budget = budget
        self._by_id: dict[str, Session] = {}
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
        for s in old:
            self._drop(s)
        return len(old)

    def add(self, owner: str, mode: str, prompt: list[int], tokens: int, make_lm) -> Session:
        """A new session whose first pass holds ``tokens`` positions (booked before anything is allocated)."""
        self.evict_idle()
        with self._lock:
            mine = sum(1 for s in self._by_id.values() if s.owner == owner)
            if mine >= self.limits.sessions_per_client:
                raise WireError(429, f"this client already holds {mine} sessions (limit "
                                     f"{self.limits.sessions_per_client}); close finished ones with DELETE "
                                     "/v1/sessions/{id} or wait for idle ones to expire")
            if len(self._by_id) >= self.limits.max_sessions:
                raise WireError(503, "the service holds its maximum number of sessions; retry shortly")
            booking = self.budget.book(tokens)
            s = Session(secrets.token_urlsafe(18), owner, mode, prompt, make_lm(), booking)
            self._by_id[s.id] = s
            return s

    def get(self, owner: str, sid: str) -> Session:
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
            gone = self._by_id.pop(s.id, None)
        if gone is not None:
            self._drop(gone)

    @staticmethod
    def _drop(s: Session) -> None:
        """Free a session's cache: drop the only reference to it, then its booking (which may release memory)."""
        s.lm = None
        s.booking.free()

    def owned_by(self, owner: str) -> int:
        with self._lock:
            return sum(1 for s in self._by_id.values() if s.owner == owner)
