"""uvicorn's h11 protocol with deadlines on receiving a request (see :func:`sectrace.live.service.guarded_protocol`).

A module of its own because it subclasses uvicorn's protocol at import: only the server imports it,
never ``import sectrace.live.service`` by itself.
"""

from __future__ import annotations

import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("sectrace.serve")

_TIMEOUT_BODY = b'{"error":"the request headers did not arrive in time; connection closed"}'
_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


class GuardedH11Protocol(H11Protocol):
    """A request's headers must arrive within ``header_timeout_s`` of its first byte (or of the connection,
    for a fresh one), its body within ``body_timeout_s`` after; set both on a subclass (:func:`with_deadlines`).

    The deadline is absolute, not per byte: a timer is armed when a phase begins and only moved when the
    phase changes. A connection past it is closed; one still in its headers is told 408 first."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
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
        """Arm the deadline of the phase the connection is in now (or none between requests)."""
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
        delay = self.header_timeout_s if phase == "headers" else self.body_timeout_s
        self._timer = self.loop.call_later(delay, self._expired, phase)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._phase = None, None

    def _expired(self, phase: str) -> None:
        """Close the connection: 408 and a log line for late headers; a late body is logged by its handler
        (it is waiting for the body, and names the request) or here when no handler is."""
        self._timer, self._phase = None, None
        if self.transport.is_closing():
            return
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        cycle = self.cycle
        if phase == "headers":
            log.info("%s did not send its request headers within %g s; connection closed", peer,
                     self.header_timeout_s)
            self.transport.write(_REQUEST_TIMEOUT)
        elif cycle is not None and not cycle.response_complete:
            cycle.scope["sectrace.timed_out"] = True  # the handler waiting for the body logs it
        else:
            log.info("%s did not send its request body within %g s; connection closed", peer, self.body_timeout_s)
        self.transport.close()


def with_deadlines(header_timeout_s: float, body_timeout_s: float) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn instantiates per connection, with these deadlines."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s})
