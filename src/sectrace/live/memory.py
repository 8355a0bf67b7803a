"""KV-cache memory of the service: booked before it is allocated, and handed back to the OS once freed.

Why bookings: a forward pass that runs out of memory takes the whole service down, so every cache is
booked against one budget first and a request past it gets 503. Why a releaser: the allocator keeps
freed pages, so without it the process stays at its peak after sessions close.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import threading
import time

from .wire import WireError

log = logging.getLogger("sectrace.serve")
MiB = 2**20


def default_kv_budget(device: str) -> int:
    """A quarter of the machine's memory (CPU), half of the device's free memory after loading (CUDA)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0] // 2)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


class KvBudget:
    """KV-cache bytes booked against one total: sessions (for as long as they live) and one-off calls.

    Why bookings and not measurements: memory must be refused before a forward pass allocates it. A
    cache of n positions costs ``per_cache + n × per_token`` (per_token from the model's config, see
    verifier.kv_bytes_per_token). A session's booking only grows, to the most positions it ever held:
    a cropped DynamicCache keeps its storage until the next step replaces it."""

    def __init__(self, total: int, per_token: int, per_cache: int, on_free=None):
        self.total, self.per_token, self.per_cache = total, per_token, per_cache
        self.in_use = 0
        self.peak = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._on_free = on_free

    def cost(self, tokens: int) -> int:
        return self.per_cache + tokens * self.per_token

    def book(self, tokens: int) -> Booking:
        b = Booking(self)
        b.grow(tokens, first=True)
        return b

    def _take(self, nbytes: int):
        with self._lock:
            if self.in_use + nbytes > self.total:
                self.refused += 1
                raise WireError(503, f"the service's KV-cache memory is fully booked ({self.in_use // MiB} of "
                                     f"{self.total // MiB} MiB); retry shortly or close finished sessions")
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)

    def _give(self, nbytes: int):
        with self._lock:
            self.in_use -= nbytes
        if self._on_free is not None:
            self._on_free(nbytes)


class Booking:
    """One cache's share of a :class:`KvBudget`; ``free()`` is idempotent."""

    def __init__(self, budget: KvBudget):
        self.budget = budget
        self.tokens = 0
        self.nbytes = 0
        self.freed = False

    def grow(self, tokens: int, first: bool = False) -> None:
        if self.freed or (tokens <= self.tokens and not first):
            return
        need = self.budget.cost(max(tokens, self.tokens))
        self.budget._take(need - self.nbytes)
        self.tokens, self.nbytes = max(tokens, self.tokens), need

    def free(self) -> None:
        if not self.freed:
            self.freed = True
            self.budget._give(self.nbytes)


def release_memory(device: str = "cpu") -> None:
    """Hand freed memory back: young garbage, CUDA's cached blocks, glibc's free heap pages.

    A full gc.collect() would hold the GIL for most of a second with a model loaded, and sessions
    are freed by reference counting (no cycles), so only the young generations are collected."""
    gc.collect(1)
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _malloc_trim():
    """glibc's malloc_trim, or None (musl, macOS: their allocators return memory by themselves or not at all)."""
    global _TRIM
    if _TRIM is False:
        try:
            _TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)
        except OSError:
            _TRIM = None
    return _TRIM


_TRIM = False


class MemoryReleaser:
    """Calls :func:`release_memory` after caches are freed, once the service has been quiet for a moment.

    Why: glibc keeps freed heap pages in its arenas (one per thread that allocated), so RSS stayed
    at its peak after sessions closed; malloc_trim(0) returns them. It locks the arenas while it runs
    (tens of ms), so it waits until no request has been in flight for ``quiet_s`` rather than stall a
    call (a stall in a validation run would look like simulator error), and only once
    ``threshold`` bytes were freed (a small stateless call is not worth it)."""

    def __init__(self, device: str = "cpu", quiet_s: float = 0.2, threshold: int = 4 * MiB):
        self.device, self.quiet_s, self.threshold = device, quiet_s, threshold
        self.pending = 0
        self.inflight = 0
        self.last_activity = time.monotonic()
        self.releases = 0
        self._cv = threading.Condition()
        self._thread = None
        self._stop = False

    def enter(self):
        with self._cv:
            self.inflight += 1
            self.last_activity = time.monotonic()

    def leave(self):
        with self._cv:
            self.inflight -= 1
            self.last_activity = time.monotonic()
            self._cv.notify()

    def freed(self, nbytes: int):
        with self._cv:
            self.pending += nbytes
            if self.pending >= self.threshold and self._thread is None and not self._stop:
                self._thread = threading.Thread(target=self._run, name="sectrace-memory", daemon=True)
                self._thread.start()
            self._cv.notify()

    def _run(self):
        with self._cv:
            while not self._stop:
                if self.pending < self.threshold:
                    self._cv.wait()
                    continue
                quiet = time.monotonic() - self.last_activity
                if self.inflight or quiet < self.quiet_s:
                    self._cv.wait(self.quiet_s if self.inflight else self.quiet_s - quiet)
                    continue
                self.pending = 0
                self._cv.release()
                try:
                    release_memory(self.device)
                except Exception:  # noqa: BLE001  (best effort: memory stays with the allocator)
                    log.warning("could not release freed memory", exc_info=True)
                finally:
                    self._cv.acquire()
                self.releases += 1

    def close(self):
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
