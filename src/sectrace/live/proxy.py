"""A shaping TCP proxy: a real network path with a chosen RTT, jitter, bandwidth and loss, on loopback.

Why a proxy: ``tc netem`` on a veth pair between namespaces is the usual tool, but it needs
the kernel's netem module, which many containers and VMs lack (this project's CI machines
among them). The proxy shapes every byte the edge and the service exchange, in both
directions, with the simulator's network model:

- each chunk waits for the link to be free, then takes ``bytes / rate`` to send
  (serialisation, so a big upload queues behind itself);
- it then arrives ``rtt / 2`` later, plus a jitter sample (a scipy.stats spec, as in the
  simulator) per chunk;
- with probability ``loss`` a chunk is "lost" and costs one retransmission timeout ``rto``
  (repeatedly, geometrically), as TCP would; bytes are never actually dropped, because the
  loopback under the proxy is lossless and TCP above it must stay intact;
- delivery stays in order (TCP): a chunk never overtakes the one before it.

Only loopback addresses are ever listened on or connected to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import threading
from dataclasses import dataclass, field

from ..errors import UserError
from ..network import Network, parse_jitter


@dataclass
class Counters:
    up_bytes: int = 0
    down_bytes: int = 0
    up_chunks: int = 0
    down_chunks: int = 0
    connections: int = 0
    losses: int = 0
    extra: dict = field(default_factory=dict)


def _loopback(host: str) -> None:
    try:
        ip = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        raise UserError(f"cannot resolve {host!r}; the shaping proxy only connects to loopback (127.0.0.1)") from None
    if not ip.is_loopback:
        raise UserError(f"{host} is not a loopback address; the shaping proxy only shapes paths on this machine")


class ShapingProxy:
    """Listens on 127.0.0.1 (an ephemeral port) and forwards to ``target`` through the shaped path.

    Runs its own event loop in a background thread: ``with ShapingProxy(...) as p: use p.port``.
    """

    def __init__(self, target_host: str, target_port: int, spec: Network, seed: int = 0):
        """``spec`` is the simulator's Network (checked there); its framing overhead is not added here:
        the proxy shapes the real bytes, framing included."""
        _loopback(target_host)
        self.target = (target_host, target_port)
        self.spec = spec
        self.seed = seed
        self.counters = Counters()
        self._rng = random.Random(seed)
        self._jitter = parse_jitter(spec.jitter) if spec.jitter else None
        self._np_rng = None
        self.port = None
        self._loop = None
        self._thread = None
        self._ready = threading.Event()
        self._error = None

    # --- the shaped pump -------------------------------------------------------------
    def _extra_delay(self) -> float:
        extra = 0.0
        if self._jitter is not None:
            import numpy as np

            if self._np_rng is None:
                self._np_rng = np.random.default_rng(self.seed)
            extra += float(self._jitter.rvs(random_state=self._np_rng))
        while self.spec.loss and self._rng.random() < self.spec.loss:
            extra += self.spec.rto_s
            self.counters.losses += 1
        return extra

    async def _pump(self, reader, writer, rate: float, up: bool):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        one_way = self.spec.rtt_s / 2

        async def deliver():
            while True:
                release, data = await queue.get()
                wait = release - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    break
                writer.write(data)
                try:
                    await writer.drain()
                except ConnectionError:
                    break
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except (OSError, RuntimeError):
                pass

        sender = asyncio.create_task(deliver())
        link_free = last = 0.0
        try:
            while True:
                data = await reader.read(1 << 16)
                now = loop.time()
                if not data:
                    queue.put_nowait((last, None))
                    break
                start = max(now, link_free)
                link_free = start + len(data) / rate
                last = max(link_free + one_way + self._extra_delay(), last)
                if up:
                    self.counters.up_bytes += len(data)
                    self.counters.up_chunks += 1
                else:
                    self.counters.down_bytes += len(data)
                    self.counters.down_chunks += 1
                queue.put_nowait((last, data))
        except ConnectionError:
            queue.put_nowait((last, None))
        except asyncio.CancelledError:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            raise
        await sender

    async def _handle(self, c_reader, c_writer):
        self.counters.connections += 1
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()
            return
        for w in (c_writer, s_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(self._pump(c_reader, s_writer, self.spec.up_Bps, True),
                                 self._pump(s_reader, c_writer, self.spec.down_Bps, False))
        except asyncio.CancelledError:
            pass  # the proxy is stopping: end this connection quietly
        finally:
            for w in (c_writer, s_writer):
                w.close()

    # --- lifecycle ---------------------------------------------------------------------
    def _serve(self):
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(_quiet_shutdown)
        try:
            server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._server = server
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    async def _shutdown(self):
        """Stop listening, then end every open connection inside the loop (no task left pending)."""
        self._server.close()
        me = asyncio.current_task()
        while True:
            tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not tasks:
                break
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def start(self) -> ShapingProxy:
        self._thread = threading.Thread(target=self._serve, name="sectrace-shaping-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or self.port is None:
            raise UserError(f"the shaping proxy could not listen on 127.0.0.1 ({self._error})")
        return self

    def stop(self):
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _quiet_shutdown(loop, context):
    """Connections cut by the proxy's own shutdown are expected; anything else is reported as usual."""
    if isinstance(context.get("exception"), asyncio.CancelledError) or \
            str(context.get("message", "")).startswith("Task was destroyed but it is pending"):
        return
    loop.default_exception_handler(context)
