"""`sectrace serve` against an attacker (issue 15): schema behind the key, slow connections, large bodies,
clients that hang up, KV-cache memory, and the command line's options.

Why raw sockets: a slowloris client, a body that never comes and a client that vanishes mid-upload are
things httpx will not do. The service runs in this process (BackgroundServer) so the tests can see its
threads, its memory bookings and this process's RSS.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
msgpack = pytest.importorskip("msgpack")

import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from tiny_models import make_pair, make_qwen2, make_tokenizer  # noqa: E402

from sectrace.cli import main  # noqa: E402
from sectrace.errors import UserError  # noqa: E402
from sectrace.live import verifier as verifier_module  # noqa: E402
from sectrace.live import wire  # noqa: E402
from sectrace.live.service import BackgroundServer, Limits, create_app  # noqa: E402
from sectrace.live.verifier import load_cloud_model  # noqa: E402

KEY = "k" * 24
KEYS = {"alice": KEY}
AUTH = {"authorization": f"Bearer {KEY}"}
HEADER_S, BODY_S = 1.0, 1.5  # the deadlines of the module's service
MARGIN_S = 2.0  # how much later than its deadline a connection may close (a loaded 2-core machine)
MAX_BODY = 4 * 2**20


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    _, _, v = make_pair(tmp_path_factory.mktemp("hardening"))
    return load_cloud_model(str(v))


@pytest.fixture(scope="module")
def service(cloud):
    app = create_app(cloud, KEYS, Limits(max_body_bytes=MAX_BODY, max_context=256, max_prompt=64,
                                         header_timeout_s=HEADER_S, body_timeout_s=BODY_S))
    with BackgroundServer(app) as srv:
        yield app, srv


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def logs(service):
    """Every log record of the service, uvicorn (which does not propagate to the root) and asyncio."""
    h = _Records()
    serve_log = logging.getLogger("sectrace.serve")
    level = serve_log.level
    serve_log.setLevel(logging.INFO)
    targets = [logging.getLogger(), logging.getLogger("uvicorn")]
    for lg in targets:
        lg.addHandler(h)
    yield h.records
    for lg in targets:
        lg.removeHandler(h)
    serve_log.setLevel(level)


def _address(srv):
    return srv.host, srv.port


def _health_latencies(url: str, stop: threading.Event, out: list):
    """Time /v1/health on its own connection until ``stop``."""
    with httpx.Client(base_url=url, timeout=30) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            assert c.get("/v1/health").status_code == 200
            out.append(time.perf_counter() - t0)
            time.sleep(0.02)


def _read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float | None]:
    """Everything the server sends until it closes (its EOF or reset), and when; None if it stays open."""
    got, t_end = b"", time.monotonic() + limit_s
    while time.monotonic() < t_end:
        r, _, _ = select.select([sock], [], [], 0.05)
        if r:
            try:
                data = sock.recv(65536)
            except OSError:
                return got, time.monotonic()
            if not data:
                return got, time.monotonic()
            got += data
    return got, None


def _trickle(sock: socket.socket, data: bytes, gap_s: float) -> tuple[bytes, float | None]:
    """Send ``data`` a byte every ``gap_s`` (a slowloris client), reading meanwhile; (received, closed at)."""
    got = b""
    for i in range(len(data)):
        try:
            sock.send(data[i:i + 1])
        except OSError:
            return got, time.monotonic()
        t_next = time.monotonic() + gap_s
        while time.monotonic() < t_next:
            r, _, _ = select.select([sock], [], [], max(0.0, t_next - time.monotonic()))
            if r:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    return got, time.monotonic()
                if not chunk:
                    return got, time.monotonic()
                got += chunk
    return got, None


def _response(sock: socket.socket, limit_s: float = 10) -> bytes:
    """One whole HTTP response (head and Content-Length body) from ``sock``."""
    got, t_end = b"", time.monotonic() + limit_s
    while time.monotonic() < t_end:
        head, sep, body = got.partition(b"\r\n\r\n")
        if sep:
            n = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")), 0)
            if len(body) >= n:
                return got
        r, _, _ = select.select([sock], [], [], 0.05)
        if r:
            data = sock.recv(65536)
            if not data:
                return got
            got += data
    return got


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else -1


def _json_error(raw: bytes) -> str:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), raw[:300]
    msg = json.loads(body)["error"]
    assert isinstance(msg, str) and msg and "\n" not in msg and "Traceback" not in msg and len(msg) < 400
    return msg


# --- the schema and docs --------------------------------------------------------------------------------------------


def test_schema_needs_the_key_and_no_interactive_docs_are_served(service):
    app, srv = service
    with httpx.Client(base_url=srv.url, timeout=10) as anon, httpx.Client(base_url=srv.url, headers=AUTH) as c:
        r = anon.get("/openapi.json")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "paths" not in r.text
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            for client in (anon, c):
                r = client.get(path)
                assert r.status_code in (401, 404) and "swagger" not in r.text.lower() and \
                    "redoc" not in r.text.lower(), (path, r.status_code)
        r = c.get("/openapi.json")
        assert r.status_code == 200 and r.json()["paths"] == app.openapi()["paths"]
        assert "/v1/sessions" in r.json()["paths"] and "/openapi.json" not in r.json()["paths"]
        assert anon.get("/v1/health").json() == {"status": "ok"}  # still the one call without a key


# --- slow connections -------------------------------------------------------------------------------------------


def test_slowloris_connections_are_closed_at_the_header_deadline_and_health_stays_fast(service):
    """20 clients sending a 120-byte request head a byte every 0.1 s (12 s each) are cut at HEADER_S."""
    _, srv = service
    head = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 80 + b"\r\n\r\n"
    assert len(head) * 0.1 > HEADER_S + MARGIN_S + 5  # it would take far longer than the deadline
    n, results = 20, {}
    stop, lat = threading.Event(), []

    def slow(i):
        with socket.create_connection(_address(srv)) as s:
            t0 = time.monotonic()
            got, closed = _trickle(s, head, 0.1)
            results[i] = (got, None if closed is None else closed - t0)

    def silent(i):  # connects and sends nothing at all
        with socket.create_connection(_address(srv)) as s:
            t0 = time.monotonic()
            got, closed = _read_until_closed(s, HEADER_S + MARGIN_S + 5)
            results[i] = (got, None if closed is None else closed - t0)

    threads = [threading.Thread(target=slow if i < n else silent, args=(i,)) for i in range(n + 2)]
    watch = threading.Thread(target=_health_latencies, args=(srv.url, stop, lat))
    watch.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stop.set()
    watch.join(10)
    assert len(results) == n + 2
    for i, (got, after) in results.items():
        assert after is not None, f"connection {i} was still open after {HEADER_S + MARGIN_S + 5} s"
        assert HEADER_S - 0.05 <= after <= HEADER_S + MARGIN_S, (i, after)
        assert _status(got) == 408, (i, got[:100])
    assert len(lat) >= 5 and max(lat) < 1.0, lat


def test_a_body_that_does_not_arrive_in_time_is_cut_with_one_log_line(service, logs):
    _, srv = service
    head = (b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
            b"\r\nContent-Type: application/msgpack\r\nContent-Length: 1000\r\n\r\n")
    with socket.create_connection(_address(srv)) as s:
        s.sendall(head)
        t0 = time.monotonic()
        got, closed = _trickle(s, b"\x00" * 1000, 0.1)  # 100 s at this pace
    assert closed is not None and BODY_S - 0.05 <= closed - t0 <= BODY_S + MARGIN_S, closed and closed - t0
    assert got == b""  # nothing to answer: the connection is closed, the handler did nothing
    time.sleep(0.2)
    mine = [r for r in logs if r.name == "sectrace.serve"]
    assert len(mine) == 1 and mine[0].levelno == logging.INFO and mine[0].exc_info is None, \
        [r.getMessage() for r in mine]
    assert f"did not send its body within {BODY_S:g} s" in mine[0].getMessage()
    assert not [r for r in logs if r.levelno >= logging.WARNING], [r.getMessage() for r in logs]


# --- large bodies -----------------------------------------------------------------------------------------------


def test_64_oversized_bodies_are_refused_from_their_content_length_without_being_read(service):
    """Each sends only its head announcing a body over the limit: the 413 comes without a byte of body, and the
    connection (still owed that body) is closed at the body deadline; health checks stay fast throughout."""
    _, srv = service
    n, replies = 64, {}
    head = (b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
            b"\r\nContent-Type: application/msgpack\r\nContent-Length: " + str(2 * MAX_BODY).encode() + b"\r\n\r\n")
    start = threading.Barrier(n)
    stop, lat = threading.Event(), []

    def one(i):
        with socket.create_connection(_address(srv)) as s:
            start.wait()
            s.sendall(head)
            t0 = time.monotonic()
            got, closed = _read_until_closed(s, BODY_S + MARGIN_S + 5)
            replies[i] = (got, None if closed is None else closed - t0)

    watch = threading.Thread(target=_health_latencies, args=(srv.url, stop, lat))
    watch.start()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stop.set()
    watch.join(10)
    assert len(replies) == n
    for got, after in replies.values():
        assert _status(got) == 413, got[:200]
        assert "limit" in _json_error(got)
        assert after is not None and after <= BODY_S + MARGIN_S
    assert len(lat) >= 3 and max(lat) < 1.0, lat


def test_large_bodies_are_decoded_off_the_event_loop_and_health_stays_fast(service, monkeypatch):
    """12 bodies of ~4 MB of JSON ids (2 million each, over the context limit): refused in threads, and cheaply
    (json.loads of such a body holds the GIL for ~0.2 s, which stalled health checks even from a thread)."""
    app, srv = service
    threads_seen, real = [], wire.decode_body

    def spy(*a, **kw):
        threads_seen.append(threading.get_ident())
        return real(*a, **kw)

    monkeypatch.setattr(wire, "decode_body", spy)
    raw = b'{"prompt": [' + b"1," * (MAX_BODY // 2 - 100) + b'1], "draft": [1]}'
    assert len(raw) <= MAX_BODY
    n, statuses, lat = 12, [], []
    stop = threading.Event()
    start = threading.Barrier(n)

    def one():
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
            start.wait()
            r = c.post("/v1/verify", content=raw, headers={"content-type": wire.JSON})
            statuses.append((r.status_code, r.json()["error"]))

    watch = threading.Thread(target=_health_latencies, args=(srv.url, stop, lat))
    watch.start()
    ts = [threading.Thread(target=one) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    stop.set()
    watch.join(10)
    assert len(statuses) == n and all(s == 413 and "limit" in m for s, m in statuses), statuses
    assert len(threads_seen) == n and srv._thread.ident not in threads_seen  # the event loop's thread
    assert max(lat) < 1.0, lat
    assert app.state.stats["rejected"] >= n


def test_bodies_in_flight_are_bounded_in_bytes(service):
    """Past the bytes being received at once, another body is refused with 503 while the first one is served."""
    app, srv = service
    limit = app.state.receiving["limit"]
    app.state.receiving["limit"] = MAX_BODY
    try:
        part = int(0.6 * MAX_BODY)

        def head(n):
            return (b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                    b"\r\nContent-Type: application/json\r\nContent-Length: " + str(n).encode() + b"\r\n\r\n")

        with socket.create_connection(_address(srv)) as a, socket.create_connection(_address(srv)) as b:
            a.sendall(head(part + 2) + b" " * part)
            deadline = time.monotonic() + 10
            while app.state.receiving["bytes"] < part and time.monotonic() < deadline:
                time.sleep(0.01)
            assert app.state.receiving["bytes"] >= part
            b.sendall(head(part) + b" " * part)
            got_b = _response(b)
            assert _status(got_b) == 503 and "retry" in _json_error(got_b)
            a.sendall(b"{}")  # the first body completes and is served (here: refused as incomplete, a 422)
            got_a = _response(a)
            assert _status(got_a) == 422, got_a[:200]
        deadline = time.monotonic() + 5
        while app.state.receiving["bytes"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.state.receiving["bytes"] == 0
    finally:
        app.state.receiving["limit"] = limit


# --- clients that hang up ---------------------------------------------------------------------------------------


def test_a_client_that_disconnects_mid_upload_is_one_info_line_without_a_traceback(service, logs):
    _, srv = service
    head = (b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
            b"\r\nContent-Type: application/msgpack\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(3):
        with socket.create_connection(_address(srv)) as s:
            s.sendall(head + b"\x00" * 70000)
            time.sleep(0.1)  # the handler is reading the body
    deadline = time.monotonic() + 5
    while len([r for r in logs if r.name == "sectrace.serve"]) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    mine = [r for r in logs if r.name == "sectrace.serve"]
    assert len(mine) == 3, [r.getMessage() for r in logs]
    for r in mine:
        assert r.levelno == logging.INFO and r.exc_info is None and "\n" not in r.getMessage()
        assert "disconnected while sending its request (POST /v1/sessions)" in r.getMessage()
    assert not [r for r in logs if r.levelno >= logging.WARNING or r.exc_info], [r.getMessage() for r in logs]
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.get("/v1/health").status_code == 200


# --- KV-cache memory --------------------------------------------------------------------------------------------

LAYERS, HIDDEN, HEADS, KV_HEADS = 8, 256, 4, 2  # make_qwen2's heads; float32
FULL = 2048  # the memory tests' --max-context


@pytest.fixture(scope="module")
def big_cloud(tmp_path_factory):
    """A model whose KV cache is large enough to see in RSS: 8 KiB per position, 16 MiB per full session."""
    root = tmp_path_factory.mktemp("kv")
    tok = make_tokenizer(root / "tok")
    make_qwen2(root / "v", tok, seed=3, layers=LAYERS, hidden=HIDDEN, dtype="float32")
    return load_cloud_model(str(root / "v"), threads=1)


def _per_token_from_config(path) -> int:
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["num_attention_heads"] == HEADS and cfg["num_key_value_heads"] == KV_HEADS
    return cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * (cfg["hidden_size"] // HEADS) * 2 * 4


def _open_full(c: httpx.Client, prompt_len: int = 60, committed: int = FULL - 60 - 4, draft: int = 4):
    obj = {"prompt": wire.pack_ids([5] * prompt_len), "committed": wire.pack_ids([7] * committed),
           "draft": wire.pack_ids([9] * draft)}
    return c.post("/v1/sessions", content=msgpack.packb(obj, use_bin_type=True),
                  headers={"content-type": wire.MSGPACK, "accept": wire.MSGPACK})


def test_kv_bytes_per_token_is_what_a_cache_really_holds(big_cloud, tmp_path):
    from pathlib import Path

    per_token = _per_token_from_config(Path(big_cloud.name))
    assert big_cloud.kv_bytes_per_token == per_token == LAYERS * KV_HEADS * (HIDDEN // HEADS) * 2 * 4
    app = create_app(big_cloud, KEYS, Limits(max_context=FULL, max_kv_bytes=4 * FULL * per_token))
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
        r = _open_full(c, committed=500)
        assert r.status_code == 201, r.text
        s = app.state.sessions._by_id[msgpack.unpackb(r.content)["session"]]
        held = sum(t.numel() * t.element_size() for layer in s.lm.slots[0][0].layers
                   for t in (layer.keys, layer.values))
        assert held == (60 + 500 + 4) * per_token
        mem = c.get("/v1/info").json()["memory"]
        assert mem["kv_bytes_per_token"] == per_token
        assert mem["kv_booked_bytes"] == mem["cache_overhead_bytes"] + (60 + 500 + 4) * per_token
        assert mem["session_max_bytes"] == mem["cache_overhead_bytes"] + FULL * per_token


def test_kv_memory_is_bounded_in_total_and_refused_with_503(big_cloud):
    per_token = big_cloud.kv_bytes_per_token
    overhead = big_cloud.cache_overhead_bytes
    budget = 2 * (overhead + FULL * per_token) + 300 * per_token  # two full sessions and a bit
    app = create_app(big_cloud, KEYS, Limits(max_context=FULL, max_kv_bytes=budget))
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
        sids = [msgpack.unpackb(_open_full(c).content)["session"] for _ in range(2)]
        r = _open_full(c)
        assert r.status_code == 503 and "memory" in r.json()["error"] and "\n" not in r.json()["error"]
        small = _open_full(c, committed=100)  # fits in what is left ...
        assert small.status_code == 201, small.text
        sid = msgpack.unpackb(small.content)["session"]
        grow = {"base": 101, "new": wire.pack_ids([7] * 1500), "draft": wire.pack_ids([9])}
        r = c.post(f"/v1/sessions/{sid}/verify", content=msgpack.packb(grow, use_bin_type=True),
                   headers={"content-type": wire.MSGPACK})
        assert r.status_code == 503 and "memory" in r.json()["error"]  # ... but cannot grow past the budget
        assert app.state.budget.in_use <= budget
        assert c.delete(f"/v1/sessions/{sids.pop()}").status_code == 204
        r = c.post(f"/v1/sessions/{sid}/verify", content=msgpack.packb(grow, use_bin_type=True),
                   headers={"content-type": wire.MSGPACK})
        assert r.status_code == 200, r.text  # closing a session made room
        for s in sids + [sid]:
            assert c.delete(f"/v1/sessions/{s}").status_code == 204
        assert app.state.budget.in_use == 0
    with pytest.raises(UserError, match="--max-kv-memory"):
        create_app(big_cloud, KEYS, Limits(max_context=FULL, max_kv_bytes=FULL * per_token))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_closed_sessions_give_their_memory_back(big_cloud):
    """10 full-context sessions (16 MiB of KV each) raise RSS by well over 100 MiB; closed, it comes back."""
    n, per_session = 10, FULL * big_cloud.kv_bytes_per_token
    app = create_app(big_cloud, KEYS, Limits(max_context=FULL, sessions_per_client=n))
    releaser = app.state.releaser
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, headers=AUTH, timeout=120) as c:

        def settled(before_releases):
            deadline = time.monotonic() + 10
            while releaser.releases == before_releases and time.monotonic() < deadline:
                time.sleep(0.05)
            assert releaser.releases > before_releases, "freed memory was never released"
            return _rss()

        # warm-up: the model's and the allocator's first-use memory, on a small session
        sid = msgpack.unpackb(_open_full(c, committed=50).content)["session"]
        assert c.delete(f"/v1/sessions/{sid}").status_code == 204
        time.sleep(0.5)
        base, releases = _rss(), releaser.releases
        sids = [msgpack.unpackb(_open_full(c).content)["session"] for _ in range(n)]
        peak = _rss()
        for sid in sids:
            assert c.delete(f"/v1/sessions/{sid}").status_code == 204
        after = settled(releases)
    grown = peak - base
    assert grown > 0.6 * n * per_session, (base, peak)  # the sessions really were in RSS
    assert app.state.budget.in_use == 0 and len(app.state.sessions) == 0
    assert after - base < max(32 * 2**20, 0.15 * grown), \
        f"RSS {base / 2**20:.0f} MiB → {peak / 2**20:.0f} (open) → {after / 2**20:.0f} (closed)"


# --- the command line -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, words", [
    (["--port", "99999"], "--port 99999"), (["--port", "-1"], "--port -1"),
    (["--device", "cuda:99"], "--device cuda:99"), (["--device", "tpu"], "--device"),
    (["--max-body", "0B"], "--max-body"), (["--max-sessions", "0"], "--max-sessions"),
    (["--sessions-per-client", "0"], "--sessions-per-client"), (["--threads", "0"], "--threads"),
    (["--max-draft", "0"], "--max-draft"), (["--max-context", "0"], "--max-context"),
    (["--idle", "0s"], "--idle"), (["--header-timeout", "0s"], "--header-timeout"),
    (["--body-timeout", "-1s"], "--body-timeout"), (["--max-kv-memory", "0B"], "--max-kv-memory"),
    (["--max-kv-memory", "lots"], "--max-kv-memory"),
])
def test_serve_refuses_bad_options_before_loading_the_model(monkeypatch, tmp_path, args, words):
    def load(*a, **kw):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(verifier_module, "load_cloud_model", load)
    res = CliRunner().invoke(main, ["serve", "--verifier", str(tmp_path), "--no-auth", *args],
                             catch_exceptions=False)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], res.output
    assert "Traceback" not in res.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_serve_on_cuda_without_cuda_is_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setattr(verifier_module, "load_cloud_model", lambda *a, **kw: pytest.fail("loaded"))
    res = CliRunner().invoke(main, ["serve", "--verifier", str(tmp_path), "--device", "cuda"], catch_exceptions=False)
    assert res.exit_code == 2 and "no CUDA device" in res.output and "Traceback" not in res.output
