"""`sectrace serve` over real HTTP: authentication, isolation between clients, limits, the protocol, fuzzing, load.

Why over a socket rather than an ASGI test client: the edge talks to uvicorn through httpx with
keep-alive, chunked bodies and streamed replies, and those paths (body-size limits without a
Content-Length, a token stream read record by record) only behave as deployed on a real server.
One tiny verifier and one service serve the whole module so the file stays fast.
"""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
msgpack = pytest.importorskip("msgpack")
schemathesis = pytest.importorskip("schemathesis")

import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tiny_models import make_pair  # noqa: E402

from sectrace.live import wire  # noqa: E402
from sectrace.live.client import CloudClient, CloudInputs, LiveSession, decode_live  # noqa: E402
from sectrace.live.service import BackgroundServer, Limits, create_app  # noqa: E402
from sectrace.live.verifier import load_cloud_model  # noqa: E402
from sectrace.models.lm import CachedLM  # noqa: E402
from sectrace.models.pair import load_pair  # noqa: E402
from sectrace.protocol import Accept, Always, Policy, cloud_only  # noqa: E402

KEYS = {"alice": "a" * 20, "bob": "b" * 20, "carol": "c" * 20, "dave": "d" * 20, "zoë": "z" * 20,
        **{f"edge{i}": f"edge-key-{i:02d}-" + "e" * 10 for i in range(4)}}
LIMITS = Limits(max_draft=8, max_prompt=64, max_context=256, max_new_tokens=64, max_body_bytes=64 * 1024,
                max_feature_elements=4096, sessions_per_client=4, max_sessions=64, idle_s=120.0)
VOCAB = 300
PROMPT_TEXT = "the speaker sounds"
CAPTION_LEN = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny pair (built once), the served verifier and the edge-side pair."""
    _, d, v = make_pair(tmp_path_factory.mktemp("live-service"))
    return load_cloud_model(str(v)), load_pair(str(d), str(v))


@pytest.fixture(scope="module")
def service(models):
    """One service for the module: (app, url)."""
    app = create_app(models[0], KEYS, LIMITS)
    with BackgroundServer(app) as srv:
        yield app, srv.url


@pytest.fixture(scope="module")
def prompt(models):
    return models[1].tokenizer(PROMPT_TEXT)["input_ids"]


@pytest.fixture(scope="module")
def greedy(models, prompt):
    """The verifier's own greedy continuation of the prompt (transformers, not the service)."""
    model = models[0].model
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=CAPTION_LEN, do_sample=False)
    tokens = out[0, len(prompt):].tolist()
    assert len(tokens) == CAPTION_LEN and 0 not in tokens, "the tiny verifier should not end this caption early"
    return tokens


def client(url: str, who: str | None = "alice") -> httpx.Client:
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {KEYS[who]}"} if who else {}, timeout=30)


def post(c: httpx.Client, path: str, obj, binary: bool = True, **headers) -> httpx.Response:
    """POST ``obj`` as MessagePack (ids packed when they are bytes already) or JSON."""
    if binary:
        return c.post(path, content=msgpack.packb(obj, use_bin_type=True),
                      headers={"content-type": wire.MSGPACK, "accept": wire.MSGPACK, **headers})
    return c.post(path, json=obj, headers=headers)


def body(r: httpx.Response) -> dict:
    return msgpack.unpackb(r.content) if r.headers["content-type"].startswith(wire.MSGPACK) else r.json()


def open_session(c: httpx.Client, prompt, draft, **extra) -> httpx.Response:
    return post(c, "/v1/sessions", {"prompt": wire.pack_ids(prompt), "draft": wire.pack_ids(draft), **extra})


def assert_refused(r: httpx.Response, status: int, words: str = ""):
    """A refusal is the expected status with one plain sentence under ``error`` (never a traceback)."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    msg = r.json()["error"]
    assert isinstance(msg, str) and msg and "\n" not in msg and "Traceback" not in msg and len(msg) < 400
    assert words.lower() in msg.lower(), msg


# --- authentication -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Basic " + "a" * 20, "Bearer", "Bearer not-a-key-of-this-service",
                                    "a" * 20])
def test_calls_without_a_valid_key_are_refused(service, header, prompt):
    _, url = service
    with httpx.Client(base_url=url, headers={"authorization": header} if header else {}) as c:
        for r in (c.get("/v1/info"), open_session(c, prompt, [1]), c.delete("/v1/sessions/whatever"),
                  post(c, "/v1/verify", {"prompt": list(prompt), "draft": [1]}, binary=False),
                  post(c, "/v1/generate", {"prompt": list(prompt), "max_new_tokens": 2}, binary=False)):
            assert_refused(r, 401)
            assert r.headers["www-authenticate"] == "Bearer"


def test_health_needs_no_key_and_info_names_the_client(service):
    _, url = service
    with httpx.Client(base_url=url) as c:
        assert c.get("/v1/health").json() == {"status": "ok"}
    with client(url, "bob") as c:
        info = c.get("/v1/info").json()
    assert info["client"] == "bob" and info["vocab"] == VOCAB and info["limits"]["max_draft"] == LIMITS.max_draft


def test_a_client_with_a_non_ascii_name_can_use_sessions(service, prompt):
    """Regression: ownership was compared with hmac.compare_digest on str, which raises on non-ASCII (a 500)."""
    _, url = service
    with client(url, "zoë") as c:
        r = open_session(c, prompt, [1])
        assert r.status_code == 201, r.text
        sid = body(r)["session"]
        try:
            assert post(c, f"/v1/sessions/{sid}/verify", {"base": 0, "draft": [2]}).status_code == 200
            assert c.get("/v1/info").json()["sessions"] == 1
        finally:
            assert c.delete(f"/v1/sessions/{sid}").status_code == 204


# --- isolation ----------------------------------------------------------------------------------------------------


def test_another_client_cannot_see_use_or_close_a_session(service, prompt, greedy):
    _, url = service
    with client(url, "alice") as a, client(url, "bob") as b:
        r = open_session(a, prompt, greedy[:2])
        assert r.status_code == 201
        sid = body(r)["session"]
        assert_refused(post(b, f"/v1/sessions/{sid}/verify", {"base": 0, "draft": [1]}), 404, "no such session")
        assert_refused(b.delete(f"/v1/sessions/{sid}"), 404, "no such session")
        assert b.get("/v1/info").json()["sessions"] == 0 and a.get("/v1/info").json()["sessions"] == 1
        r = post(a, f"/v1/sessions/{sid}/verify", {"base": 3, "draft": wire.pack_ids(greedy[3:5])})
        assert r.status_code == 200 and body(r)["accepted"] == 2
        assert a.delete(f"/v1/sessions/{sid}").status_code == 204
        assert_refused(post(a, f"/v1/sessions/{sid}/verify", {"base": 0, "draft": [1]}), 404)
        assert a.get("/v1/info").json()["sessions"] == 0


# --- limits -------------------------------------------------------------------------------------------------------


def test_a_draft_over_the_limit_is_413_when_opening_and_verifying(service, prompt):
    _, url = service
    too_long = [1] * (LIMITS.max_draft + 1)
    with client(url) as c:
        assert_refused(open_session(c, prompt, too_long), 413, "draft")
        assert_refused(post(c, "/v1/verify", {"prompt": list(prompt), "draft": too_long}, binary=False), 413)
        sid = body(open_session(c, prompt, [1]))["session"]
        assert_refused(post(c, f"/v1/sessions/{sid}/verify", {"base": 0, "draft": too_long}), 413, "draft")
        assert c.delete(f"/v1/sessions/{sid}").status_code == 204


def test_context_and_prompt_and_generation_limits_are_413(service):
    _, url = service
    with client(url) as c:
        assert_refused(open_session(c, [1] * (LIMITS.max_prompt + 1), [1]), 413, "prompt")
        assert_refused(open_session(c, [1] * 10, [1], committed=wire.pack_ids([2] * LIMITS.max_context)), 413)
        assert_refused(post(c, "/v1/generate", {"prompt": [1], "max_new_tokens": LIMITS.max_new_tokens + 1}), 413)


def test_a_body_over_the_limit_is_413_with_and_without_content_length(service, prompt):
    _, url = service
    big = msgpack.packb({"prompt": wire.pack_ids(prompt), "draft": [1], "audio": b"x" * LIMITS.max_body_bytes},
                        use_bin_type=True)

    def chunks():  # no Content-Length: httpx sends Transfer-Encoding: chunked
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    with client(url) as c:
        r = c.post("/v1/sessions", content=big, headers={"content-type": wire.MSGPACK})
        assert r.request.headers["content-length"] == str(len(big))
        assert_refused(r, 413, "limit")
    with client(url) as c:
        r = c.post("/v1/sessions", content=chunks(), headers={"content-type": wire.MSGPACK})
        assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
        assert_refused(r, 413, "limit")
    with client(url) as c:  # the service is still fine afterwards
        r = open_session(c, prompt, [1])
        assert r.status_code == 201
        assert c.delete(f"/v1/sessions/{body(r)['session']}").status_code == 204


def _close_all(service, who):
    app, _ = service
    for s in list(app.state.sessions._by_id.values()):
        if s.owner == who:
            app.state.sessions.remove(who, s.id)


def test_more_sessions_than_allowed_per_client_is_429(service, prompt):
    _, url = service
    with client(url, "dave") as c, client(url, "bob") as other:
        sids = [body(open_session(c, prompt, [1]))["session"] for _ in range(LIMITS.sessions_per_client)]
        assert_refused(open_session(c, prompt, [1]), 429, "sessions")
        r = open_session(other, prompt, [1])  # the limit is per client: others are not starved
        assert r.status_code == 201
        other.delete(f"/v1/sessions/{body(r)['session']}")
        assert c.delete(f"/v1/sessions/{sids.pop()}").status_code == 204
        sids.append(body(open_session(c, prompt, [1]))["session"])  # closing one frees its place
        for sid in sids:
            assert c.delete(f"/v1/sessions/{sid}").status_code == 204


def test_idle_sessions_are_evicted(models, prompt):
    app = create_app(models[0], KEYS, Limits(idle_s=0.2))
    with BackgroundServer(app) as srv, client(srv.url) as c:
        sid = body(open_session(c, prompt, [1]))["session"]
        time.sleep(0.3)
        assert app.state.sessions.evict_idle() == 1
        assert_refused(post(c, f"/v1/sessions/{sid}/verify", {"base": 0, "draft": [1]}), 404, "expired")
        body(open_session(c, prompt, [1]))  # left open: the service's own evictor must remove it
        deadline = time.monotonic() + 5
        while len(app.state.sessions) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(app.state.sessions) == 0 and app.state.sessions.evicted == 2


def test_the_service_wide_session_limit_is_503(models, prompt):
    app = create_app(models[0], KEYS, Limits(max_sessions=2))
    with BackgroundServer(app) as srv, client(srv.url, "alice") as a, client(srv.url, "bob") as b:
        assert open_session(a, prompt, [1]).status_code == 201 and open_session(b, prompt, [1]).status_code == 201
        assert_refused(open_session(a, prompt, [1]), 503, "retry")
        assert len(app.state.sessions) == 2


def test_one_block_at_a_time_per_session(service, prompt):
    """Blocks sent at once to one session: each is judged whole or refused with 409, never interleaved."""
    _, url = service
    with client(url) as c:
        sid = body(open_session(c, prompt, [1]))["session"]
        codes = []

        def send():
            with client(url) as own:
                r = post(own, f"/v1/sessions/{sid}/verify", {"base": 0, "draft": [1, 2, 3, 4, 5, 6]})
                codes.append(r.status_code if r.status_code != 409 else ("409", r.json()["error"]))

        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(codes) == 8 and 200 in codes
        assert all(x == 200 or (x[0] == "409" and "one block at a time" in x[1]) for x in codes), codes
        assert post(c, f"/v1/sessions/{sid}/verify", {"base": 0, "draft": [1]}).status_code == 200
        assert c.delete(f"/v1/sessions/{sid}").status_code == 204


@pytest.mark.parametrize("bad", [VOCAB, -1, 2**31 - 1, 10**30])
def test_ids_outside_the_vocabulary_are_422(service, prompt, bad):
    _, url = service
    with client(url) as c:
        if -2**31 <= bad < 2**31:  # packed int32 too
            assert_refused(open_session(c, prompt, [bad]), 422, "vocabulary")
        assert_refused(post(c, "/v1/verify", {"prompt": list(prompt), "draft": [bad]}, binary=False), 422)
        assert_refused(post(c, "/v1/sessions", {"prompt": [bad], "draft": [1]}, binary=False), 422)
        assert_refused(post(c, "/v1/generate", {"prompt": [bad], "max_new_tokens": 2}, binary=False), 422)
        sid = body(open_session(c, prompt, [1]))["session"]
        assert_refused(post(c, f"/v1/sessions/{sid}/verify", {"base": 0, "new": [bad], "draft": [1]},
                            binary=False), 422, "new")
        assert post(c, f"/v1/sessions/{sid}/verify", {"base": 0, "draft": [1]}).status_code == 200
        c.delete(f"/v1/sessions/{sid}")


@pytest.mark.parametrize("rule", ["top2", "rank:0", "rank:1.5", "prob:2", "rank:inf", "rank:nan", "rank:1e400",
                                  "prob:", ""])
def test_an_unknown_accept_rule_is_422(service, prompt, rule):
    """rank:inf / rank:nan used to escape as OverflowError / ValueError (a 500)."""
    _, url = service
    with client(url) as c:
        assert_refused(open_session(c, prompt, [1], accept=rule), 422, "accept")
        assert_refused(post(c, "/v1/verify", {"prompt": list(prompt), "draft": [1], "accept": rule}), 422, "accept")


def test_base_beyond_what_the_session_holds_is_409(service, prompt):
    _, url = service
    with client(url) as c:
        r = open_session(c, prompt, [1, 2])
        sid, out = body(r)["session"], body(r)
        held = out["accepted"] + 1  # accepted tokens plus the correction (or the bonus)
        assert_refused(post(c, f"/v1/sessions/{sid}/verify", {"base": held + 1, "draft": [1]}), 409, "base")
        assert post(c, f"/v1/sessions/{sid}/verify", {"base": held, "draft": [1]}).status_code == 200
        c.delete(f"/v1/sessions/{sid}")


@pytest.mark.parametrize("raw, ctype, status", [
    (b'{"prompt": [1], "draft": [1]}', "text/plain", 415),
    (b"\xc1", wire.MSGPACK, 400),
    (b"\x92\x01", wire.MSGPACK, 400),  # truncated array
    (b'{"prompt": [1], ', wire.JSON, 400),
    (b"\xff\xfe", wire.JSON, 400),
    (b"[" * 50_000, wire.JSON, 400),
    (msgpack.packb([1, 2]), wire.MSGPACK, 422),
    (b"[1, 2]", wire.JSON, 422),
    (b'"prompt"', wire.JSON, 422),
    (msgpack.packb({"prompt": b"\x01\x00\x00", "draft": [1]}), wire.MSGPACK, 422),
    (msgpack.packb({"prompt": [1], "draft": b"\x01\x00\x00\x00\x02"}), wire.MSGPACK, 422),
    (msgpack.packb({"prompt": [1], "draft": [1], "extra": 1}), wire.MSGPACK, 422),
    (msgpack.packb({"prompt": [], "draft": [1]}), wire.MSGPACK, 422),
    (msgpack.packb({"prompt": [1], "draft": [True]}), wire.MSGPACK, 422),
    (msgpack.packb({"prompt": [1.0], "draft": [1]}), wire.MSGPACK, 422),
    (b'{"prompt": [1], "draft": [1], "audio": "not base64!"}', wire.JSON, 422),
])
def test_malformed_bodies_are_clear_4xx(service, raw, ctype, status):
    _, url = service
    with client(url) as c:
        for path in ("/v1/sessions", "/v1/verify"):
            r = c.post(path, content=raw, headers={"content-type": ctype} if ctype else {})
            assert_refused(r, status)


def test_packed_ids_must_be_a_multiple_of_4_bytes_in_every_id_field(service, prompt):
    _, url = service
    with client(url) as c:
        for field in ("prompt", "committed", "draft"):
            obj = {"prompt": wire.pack_ids(prompt), "draft": wire.pack_ids([1]), field: b"\x01\x00\x00\x00\x00"}
            assert_refused(post(c, "/v1/sessions", obj), 422, "multiple of 4")
        sid = body(open_session(c, prompt, [1]))["session"]
        assert_refused(post(c, f"/v1/sessions/{sid}/verify", {"base": 0, "new": b"\x01", "draft": [1]}), 422, "new")
        c.delete(f"/v1/sessions/{sid}")


@pytest.mark.parametrize("shape, data", [([0, 2**63], b""), ([0, 2**64 - 1, 2**64 - 1], b""), ([2**40, 2**40], b""),
                                         ([-1], b""), ([2], b"\x00")])
def test_feature_tensors_with_impossible_shapes_are_4xx(service, prompt, shape, data):
    """Regression: a zero-size tensor with a dimension past int64 reached numpy's reshape and was a 500."""
    _, url = service
    t = {"dtype": "float32", "shape": shape, "data": data}
    with client(url) as c:
        r = post(c, "/v1/verify", {"prompt": wire.pack_ids(prompt), "draft": [1], "features": {"input_features": t}})
        assert r.status_code in (413, 422), r.text
        assert_refused(r, r.status_code, "features")


# --- the protocol through HTTP ------------------------------------------------------------------------------------


def test_top1_over_the_verifiers_greedy_path_accepts_everything_and_returns_the_bonus(service, prompt, greedy):
    _, url = service
    k = 4
    with client(url) as c:
        r = open_session(c, prompt, greedy[:k], accept="top1")
        assert r.status_code == 201 and r.headers["content-type"] == wire.MSGPACK
        out = body(r)
        assert out["accepted"] == k and out["top1"] == greedy[:k + 1]
        assert out["rank"] == [1] * k + [0] and out["prob"][k] != out["prob"][k]  # the bonus judges no token: NaN
        sid = out["session"]
        # next block after the bonus: base = what the cloud holds, nothing new
        nxt = wire.pack_ids(greedy[k + 1:2 * k + 1])
        out = body(post(c, f"/v1/sessions/{sid}/verify", {"base": k + 1, "draft": nxt}))
        assert out["accepted"] == k and out["top1"] == greedy[k + 1:2 * k + 2]
        # a wrong token is rejected where it is and corrected with the verifier's own token
        wrong = greedy[2 * k + 2:2 * k + 4] + [(greedy[2 * k + 4] + 1) % VOCAB]
        out = body(post(c, f"/v1/sessions/{sid}/verify", {"base": 2 * k + 2, "draft": wrong, "bonus": False}))
        assert out["accepted"] == 2 and out["top1"] == greedy[2 * k + 2:2 * k + 5] and out["rank"][2] > 1
        # JSON in, JSON out, same judgement
        out = post(c, f"/v1/sessions/{sid}/verify", {"base": 2 * k + 5, "draft": greedy[2 * k + 5:2 * k + 7]},
                   binary=False)
        assert out.headers["content-type"] == wire.JSON and out.json()["accepted"] == 2
        assert out.json()["top1"] == greedy[2 * k + 5:2 * k + 8]
        c.delete(f"/v1/sessions/{sid}")


def _judgement(out: dict) -> dict:
    return {k: v for k, v in out.items() if k not in ("session", "compute_ms", "queue_ms", "prob", "top1_prob")}


def test_stateless_verify_judges_like_the_stateful_session(service, prompt, greedy):
    """Same sequence, same judgement, whether the cloud kept the session or was sent everything.

    The edge's caption moves on as the protocol would: it sometimes commits tokens the cloud never
    saw (``new``) and sometimes rewrites the tail the cloud holds (``base`` below what it holds)."""
    _, url = service
    first = greedy[:2] + [7]
    with client(url) as c:
        opened = body(open_session(c, prompt, first, accept="rank:5"))
        sid = opened["session"]
        held = first[:opened["accepted"]] + [opened["top1"][opened["accepted"]]]
        committed = list(held)
        for draft, edit in ((greedy[len(held):len(held) + 3], None), ([5, 9, 11], "append"), (greedy[:2], "rewrite"),
                            ([1, 2, 3, 4, 5, 6, 7, 8], "rewrite")):
            if edit == "append":
                committed += [3, 4]
            elif edit == "rewrite":
                committed[-1] = (committed[-1] + 1) % VOCAB
            base = next((i for i, (a, b) in enumerate(zip(held, committed)) if a != b), min(len(held), len(committed)))
            s = body(post(c, f"/v1/sessions/{sid}/verify",
                          {"base": base, "new": wire.pack_ids(committed[base:]), "draft": draft, "accept": "rank:5"}))
            ref = body(post(c, "/v1/verify", {"prompt": wire.pack_ids(prompt), "committed": wire.pack_ids(committed),
                                              "draft": draft, "accept": "rank:5"}))
            assert _judgement(s) == _judgement(ref)
            assert s["prob"] == pytest.approx(ref["prob"], rel=1e-4, abs=1e-6, nan_ok=True)
            j = s["accepted"]
            committed = committed + draft[:j] + [s["top1"][j]]
            held = list(committed)
        assert body(open_session(c, prompt, first, accept="rank:5"))["top1"] == opened["top1"]
    _close_all(service, "alice")


def test_generate_streams_the_verifiers_greedy_decoding(service, prompt, greedy):
    _, url = service
    req = {"prompt": prompt, "max_new_tokens": CAPTION_LEN}
    with client(url) as c, c.stream("POST", "/v1/generate", json=req) as r:
        assert r.status_code == 200 and r.headers["content-type"] == wire.TOKEN_STREAM
        raw = r.read()
    assert len(raw) == CAPTION_LEN * wire.TOKEN_RECORD.size
    recs = [wire.TOKEN_RECORD.unpack_from(raw, i) for i in range(0, len(raw), wire.TOKEN_RECORD.size)]
    assert [t for t, _, _ in recs] == greedy
    assert all(0 < p <= 1 for _, p, _ in recs) and not any(e for _, _, e in recs)


# --- fuzzing ------------------------------------------------------------------------------------------------------


OPERATIONS = [("GET", "/v1/health"), ("GET", "/v1/info"), ("POST", "/v1/sessions"),
              ("POST", "/v1/sessions/{sid}/verify"), ("DELETE", "/v1/sessions/{sid}"), ("POST", "/v1/verify"),
              ("POST", "/v1/generate")]


@pytest.fixture(scope="module")
def api_schema(service):
    """The app's own OpenAPI schema, JSON bodies only (the fuzzer has no MessagePack serializer)."""
    import copy

    app, url = service
    raw = copy.deepcopy(app.openapi())
    for ops in raw["paths"].values():
        for op in ops.values():
            op.get("requestBody", {}).get("content", {}).pop(wire.MSGPACK, None)
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.update(base_url=url)
    return schema


def test_the_fuzzed_operations_are_all_the_operations(api_schema):
    assert sorted((op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()) == \
        sorted(OPERATIONS)


# schemathesis.pytest.from_fixture reaches into pytest internals that pytest 9 renamed (Function._nodeid), so the
# operations are driven through their hypothesis strategies here instead.
@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("method, path", OPERATIONS)
def test_schema_fuzzing_never_gets_a_server_error(api_schema, service, method, path, mode):
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    _, url = service
    strategy = api_schema[path][method].as_strategy(GenerationMode(mode))

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=strategy)
    def run(case):
        case.call_and_validate(base_url=url, headers={"authorization": f"Bearer {KEYS['carol']}"},
                               checks=[not_a_server_error], timeout=30)

    run()
    _close_all(service, "carol")


INT = st.integers(-2**63, 2**64 - 1)  # what MessagePack can carry
ANY = st.recursive(st.none() | st.booleans() | INT | st.floats() | st.text(max_size=20)
                   | st.binary(max_size=40), lambda inner: st.lists(inner, max_size=5)
                   | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=20)
IDS = (st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=8) | st.lists(st.integers(-5, VOCAB + 5), max_size=12)
       | st.lists(st.integers(-3, VOCAB + 3), max_size=12).map(wire.pack_ids) | st.binary(max_size=48))
TENSOR = st.fixed_dictionaries({"dtype": st.sampled_from(wire.TENSOR_DTYPES + ("float64",)),
                                "shape": st.lists(INT | st.integers(0, 4), max_size=5),
                                "data": st.binary(max_size=64)})
FIELDS = {"prompt": IDS, "committed": IDS, "draft": IDS, "new": IDS, "base": st.integers(-2, 40) | ANY,
          "accept": st.sampled_from(["top1", "rank:3", "prob:0.1", "rank:inf", "rank:nan", "prob:-1", "x"]) | ANY,
          "bonus": st.booleans() | ANY, "mode": st.sampled_from(["blind", "audio", "x"]) | ANY,
          "max_new_tokens": st.integers(-1, 80) | ANY, "repeats": st.integers(-1, 30) | ANY,
          "features": st.dictionaries(st.sampled_from(["input_features", "feature_attention_mask", "x"]), TENSOR,
                                      max_size=2) | ANY, "audio": st.binary(max_size=64) | ANY, "extra": ANY}
SESSION_BODY = {"prompt": [5, 6, 7], "draft": [1, 2]}
VALID = {"/v1/sessions": SESSION_BODY, "/v1/verify": SESSION_BODY,
         "/v1/generate": {"prompt": [5, 6, 7], "max_new_tokens": 3},
         "/v1/sessions/{sid}/verify": {"base": 0, "draft": [1]},
         "/v1/sessions/no-such-session/verify": {"base": 0, "draft": [1]}}


def mutated(base: dict):
    """A valid body with a field dropped and up to two set at random: random maps rarely get past the first
    check, these reach the limits, the id checks, the acceptance rule, the feature tensors and the model."""
    changes = st.lists(st.sampled_from(sorted(FIELDS)), max_size=2, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: FIELDS[n] for n in names}))
    drop = st.sets(st.sampled_from(sorted(base)), max_size=1)
    return st.builds(lambda ch, dr: {**{k: v for k, v in base.items() if k not in dr}, **ch}, changes, drop)


def payloads(path: str):
    packed = st.one_of(ANY, mutated(VALID[path]), mutated(VALID[path])).map(
        lambda o: msgpack.packb(o, use_bin_type=True))
    return st.one_of(st.tuples(st.binary(max_size=200), st.sampled_from([wire.MSGPACK, wire.JSON])),
                     st.tuples(packed, st.just(wire.MSGPACK)))


@pytest.fixture(scope="module")
def fuzz_client(service, prompt):
    """A client with one live session for the fuzzer to aim at (and the health check to use afterwards)."""
    _, url = service
    with client(url, "bob") as c:
        yield c, body(open_session(c, prompt, [1]))["session"]


@pytest.mark.parametrize("path", list(VALID))
@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_random_bodies_never_get_a_server_error(fuzz_client, path, data):
    c, sid = fuzz_client
    raw, ctype = data.draw(payloads(path))
    r = c.post(path.format(sid=sid), content=raw, headers={"content-type": ctype})
    assert r.status_code < 500, (r.status_code, r.text, raw)
    if r.status_code >= 400:
        assert_refused(r, r.status_code)
    if r.status_code == 201:  # a session opened: close it, or the per-client limit ends the exploration
        assert c.delete(f"/v1/sessions/{body(r)['session']}").status_code == 204
    if path == "/v1/generate" and r.status_code == 200:
        assert len(r.content) % wire.TOKEN_RECORD.size == 0


def test_the_service_still_answers_after_fuzzing(service, fuzz_client, prompt):
    c, _ = fuzz_client
    assert c.get("/v1/health").json() == {"status": "ok"}
    assert open_session(c, prompt, [1]).status_code in (201, 429)
    _close_all(service, "bob")


# --- concurrency --------------------------------------------------------------------------------------------------

THREADS = 16
PROMPTS = ["the speaker sounds", "she sounds angry", "a happy voice", "he is sad", "the tone is nervous",
           "a neutral, flat voice", "warm and bright", "speaking slowly"]


def _policies():
    top1 = Accept("top1", 1)
    return [Policy(k=3, gate=Always(), gate_spec="always", accept=top1, max_new_tokens=12),
            Policy(k=4, gate=Always(), gate_spec="always", accept=Accept("rank", 20), max_new_tokens=12),
            Policy(k=3, gate=Always(), gate_spec="always", accept=top1, max_new_tokens=12, cloud_cache="stateless"),
            cloud_only(12)]


def _decode(pair, url, key, job):
    """One utterance decoded by the real edge client on its own connection; (caption, run)."""
    text, pol = job
    ids = pair.tokenizer(text)["input_ids"]
    cl = CloudClient(url, key)
    try:
        lr = decode_live(LiveSession(CachedLM(pair.drafter, pair.shared_vocab, slots=1), ids, pair.eos, cl, pol,
                                     CloudInputs(ids)), pol)
        return list(lr.run.tokens), lr, cl.traffic
    finally:
        cl.close()


def test_concurrent_edges_get_their_own_captions_and_leave_no_sessions(models, service):
    app, url = service
    pair = models[1]
    pols = _policies()
    jobs = [(PROMPTS[i % len(PROMPTS)], pols[(i + i // len(PROMPTS)) % len(pols)]) for i in range(THREADS)]
    keys = [KEYS[f"edge{i % 4}"] for i in range(THREADS)]
    alone = {i: _decode(pair, url, keys[i], jobs[i])[0] for i in range(THREADS)}
    assert len({tuple(v) for v in alone.values()}) >= len(PROMPTS), "the prompts should give different captions"

    results, errors, peak = {}, [], [0]
    start = threading.Barrier(THREADS + 1)
    stop = threading.Event()

    def edge(i):
        try:
            start.wait()
            results[i] = _decode(pair, url, keys[i], jobs[i])
        except Exception as exc:  # noqa: BLE001  (reported below, with the thread it came from)
            errors.append((i, repr(exc)))

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], len(app.state.sessions))
            time.sleep(0.002)

    threads = [threading.Thread(target=edge, args=(i,)) for i in range(THREADS)] + [threading.Thread(target=watch)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads[:-1]:
        t.join(60)
    stop.set()
    threads[-1].join()
    assert not errors, errors
    assert not any(t.is_alive() for t in threads[:-1]) and sorted(results) == list(range(THREADS)), \
        f"only {sorted(results)} of {THREADS} edges finished"
    for i, (caption, lr, traffic) in results.items():
        assert caption == alone[i], (i, jobs[i][0], jobs[i][1].label)
        assert lr.fallbacks == 0 and lr.reopened == 0 and traffic.failures == 0
    assert 0 < peak[0] <= THREADS
    assert len(app.state.sessions) == 0
