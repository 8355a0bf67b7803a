"""Live runs: the edge client over HTTP equals the protocol's own run, falls back without losing the
caption, survives a lost session; the shaping proxy delays what it should; `sectrace validate` end to end."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sectrace.explore.synth import AlphaModel, AlphaSource
from sectrace.protocol import CloudUnavailable, Fallback, Verify, cloud_only, drafter_only, lossless, run


# --- the protocol's fallback, on a pure source (fast) --------------------------------------------
class Flaky:
    """A synthetic source whose cloud fails on chosen calls."""

    def __init__(self, src, fail):
        self.src, self.fail, self.root, self.calls = src, fail, src.root, 0

    def draft(self, s):
        return self.src.draft(s)

    def advance(self, s, t):
        return self.src.advance(s, t)

    def judge(self, s, toks, mode):
        self.calls += 1
        if self.fail(self.calls):
            raise CloudUnavailable("down")
        return self.src.judge(s, toks, mode)


def _edge_greedy(src, max_new):
    prefix, out = src.root, []
    while len(out) < max_new:
        d = src.draft(prefix)
        out.append(d.token)
        if d.eos:
            break
        prefix = src.advance(prefix, d.token)
    return out


@pytest.mark.parametrize("k", [1, 3, 5])
def test_a_cloud_that_never_answers_gives_the_edge_caption(k):
    for utt in range(5):
        src = AlphaSource(AlphaModel(seed=3), utt)
        r = run(Flaky(src, lambda n: True), lossless(k, max_new_tokens=30))
        assert r.tokens == _edge_greedy(src, 30)
        assert r.escalations == 0 and r.fallbacks == r.blocks
        assert all(type(e) is not Verify for e in r.events)


def test_cloud_only_falls_back_to_the_edge_mid_caption():
    src = AlphaSource(AlphaModel(seed=4), 0)
    full = run(src, cloud_only(30)).tokens
    r = run(Flaky(src, lambda n: n > 3), cloud_only(30))
    assert r.tokens[:3] == full[:3] and r.fallbacks == 1 and len(r.tokens) >= 3
    assert [type(e).__name__ for e in r.events].count("Prefill") == 1  # the edge starts its own decoding


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 50), k=st.integers(1, 6), fails=st.sets(st.integers(1, 20), max_size=8))
def test_fallbacks_never_lose_or_invent_tokens(seed, k, fails):
    """Whatever calls fail, every token is the drafter's or the verifier's choice at its state and the caption ends."""
    src = AlphaSource(AlphaModel(seed=seed), seed % 7)
    r = run(Flaky(src, lambda n: n in fails), lossless(k, max_new_tokens=25))
    state = src.root
    for t in r.tokens:
        ok = {src.draft(state).token, src.judge(state, (), "audio")[0].top1}
        assert t in ok
        state = src.advance(state, t)
    assert r.eos or len(r.tokens) == 25
    assert r.fallbacks == sum(type(e) is Fallback for e in r.events)


# --- the shaping proxy ------------------------------------------------------------------------
def _echo_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def loop():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return

            def serve(c=c):
                with c:
                    while data := c.recv(65536):
                        c.sendall(data)

            threading.Thread(target=serve, daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv


def test_proxy_adds_the_round_trip_and_serialises_bytes():
    from sectrace.live.proxy import ShapingProxy
    from sectrace.network import Network

    srv = _echo_server()
    try:
        with ShapingProxy("127.0.0.1", srv.getsockname()[1], Network(rtt_s=0.1, up_Bps=1e6, down_Bps=1e9)) as p:
            c = socket.create_connection(("127.0.0.1", p.port))
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t0 = time.perf_counter()
            c.sendall(b"x")
            assert c.recv(10) == b"x"
            rt = time.perf_counter() - t0
            # At least the round trip, by construction. The upper bound only rules out gross errors (the RTT
            # paid several times over); it is wide because the test machine may be busy.
            assert 0.1 <= rt < 2.0
            blob = b"y" * 100_000  # 0.1 s at 1 MB/s uplink, plus the round trip
            t0 = time.perf_counter()
            c.sendall(blob)
            got = b""
            while len(got) < len(blob):
                got += c.recv(65536)
            assert got == blob and time.perf_counter() - t0 >= 0.2
            c.close()
            assert p.counters.up_bytes == 1 + len(blob)
    finally:
        srv.close()


def test_proxy_refuses_a_non_loopback_target():
    from sectrace.errors import UserError
    from sectrace.live.proxy import ShapingProxy
    from sectrace.network import Network

    with pytest.raises(UserError, match="loopback"):
        ShapingProxy("8.8.8.8", 53, Network(rtt_s=0.0, up_Bps=float("inf"), down_Bps=float("inf")))


# --- the live client against the service, tiny models ---------------------------------------------
pytest.importorskip("torch")
pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from tiny_models import make_pair

    from sectrace.live.service import BackgroundServer, create_app
    from sectrace.live.verifier import load_cloud_model
    from sectrace.models.pair import load_pair

    root = tmp_path_factory.mktemp("live")
    _, d, v = make_pair(root)
    pair = load_pair(str(d), str(v))
    app = create_app(load_cloud_model(str(v)), {"edge": "e" * 24})
    with BackgroundServer(app) as srv:
        yield pair, srv, app, root, d, v


def _session(pair, url, policy, prompt, timeout=30.0):
    from sectrace.live.client import CloudClient, CloudInputs, LiveSession
    from sectrace.models.lm import CachedLM

    client = CloudClient(url, "e" * 24, timeout)
    return LiveSession(CachedLM(pair.drafter, pair.shared_vocab, slots=1), prompt, pair.eos, client, policy,
                       CloudInputs(prompt)), client


def _greedy(model, prompt, n):
    """Greedy tokens from transformers' generate(): up to and including the end token, at most n."""
    import torch

    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


def _assert_whole_caption(run_, want, eos_ids, n):
    """The run's caption is the whole reference: same tokens and length, ended the same way."""
    assert run_.tokens == want
    assert run_.eos == (want[-1] in eos_ids)
    assert run_.eos or len(want) == n


@pytest.mark.parametrize("policy", [lossless(3, max_new_tokens=16), lossless(1, max_new_tokens=16),
                                    cloud_only(16)], ids=lambda p: p.label)
@pytest.mark.parametrize("cache", ["stateful", "stateless"])
def test_live_lossless_equals_the_verifiers_greedy(live, policy, cache):
    from dataclasses import replace

    from sectrace.live.client import decode_live

    pair, srv, *_ = live
    policy = replace(policy, cloud_cache=cache)
    for text in ("the speaker sounds", "a happy voice"):
        prompt = pair.tokenizer(text)["input_ids"]
        sess, client = _session(pair, srv.url, policy, prompt)
        lr = decode_live(sess, policy)
        _assert_whole_caption(lr.run, _greedy(pair.verifier, prompt, 16), pair.eos, 16)
        assert lr.fallbacks == 0 and lr.calls >= 1 and 0 < lr.ttft_s <= lr.latency_s
        client.close()


def test_unreachable_service_falls_back_to_the_edge(live):
    from sectrace.live.client import decode_live

    pair, *_ = live
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    prompt = pair.tokenizer("leave me alone")["input_ids"]
    pol = lossless(3, max_new_tokens=12)
    sess, client = _session(pair, f"http://127.0.0.1:{port}", pol, prompt, timeout=2.0)
    lr = decode_live(sess, pol)
    _assert_whole_caption(lr.run, _greedy(pair.drafter, prompt, 12), pair.eos, 12)
    assert lr.fallbacks == lr.run.blocks > 0


def test_timeouts_fall_back_and_the_session_resyncs(live):
    """A slow path times calls out; the edge commits its drafts, and later calls still verify the right prefix."""
    from sectrace.live.client import decode_live
    from sectrace.live.proxy import ShapingProxy
    from sectrace.network import Network

    pair, srv, *_ = live
    prompt = pair.tokenizer("fine, whatever")["input_ids"]
    pol = lossless(2, max_new_tokens=12)
    with ShapingProxy("127.0.0.1", srv.port, Network(rtt_s=0.6, up_Bps=float("inf"), down_Bps=float("inf"))) as p:
        sess, client = _session(pair, f"http://127.0.0.1:{p.port}", pol, prompt, timeout=0.3)
        lr = decode_live(sess, pol)
        client.close()
    assert lr.fallbacks == lr.run.blocks  # every call timed out
    _assert_whole_caption(lr.run, _greedy(pair.drafter, prompt, 12), pair.eos, 12)


def test_an_evicted_session_is_reopened(live):
    from sectrace.live.client import decode_live

    pair, srv, app, *_ = live
    prompt = pair.tokenizer("the tone is nervous")["input_ids"]
    pol = lossless(2, max_new_tokens=14)
    sess, client = _session(pair, srv.url, pol, prompt)
    seen = []

    def evict_after_first_verify(ev):
        if type(ev) is Verify and not seen:
            seen.append(ev)
            app.state.sessions.evict_idle(now=time.monotonic() + 1e9)

    from sectrace.live import client as client_mod

    orig = client_mod.run
    client_mod.run = lambda s, p, observe: orig(s, p, lambda e: (observe(e), evict_after_first_verify(e)))
    try:
        lr = decode_live(sess, pol)
    finally:
        client_mod.run = orig
    assert lr.reopened == 1 and lr.fallbacks == 0
    _assert_whole_caption(lr.run, _greedy(pair.verifier, prompt, 14), pair.eos, 14)


# --- sectrace validate, end to end (a service process, the proxy, the simulator) -------------------
@pytest.fixture(scope="module")
def validated(live, tmp_path_factory):
    """One `sectrace validate` run on a tiny collected trace: 2 utterances × 4 policies × 2 RTTs, 2 repeats each."""
    import numpy as np
    import soundfile as sf
    from click.testing import CliRunner

    from sectrace.cli import main
    from sectrace.collect.collector import CollectConfig, collect
    from sectrace.gates import parse_policy

    pair, srv, app, root, d, v = live
    tmp_path = tmp_path_factory.mktemp("validate")
    rows = []
    for i, text in enumerate(["i cannot believe you did that", "that is wonderful news"]):
        wav = tmp_path / f"a{i}.wav"
        sf.write(wav, (0.2 * np.sin(np.arange(8000) / 9.0)).astype(np.float32), 16000)
        rows.append({"utt_id": f"u{i}", "audio": wav.name, "references": ["ref"], "text": text})
    man = tmp_path / "data.jsonl"
    man.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    specs = ["k=3 gate=always accept=top1 token-only", "k=2 gate=entropy:3 accept=rank:5 features stateless"]
    pols = [drafter_only(12), cloud_only(12)] + [parse_policy(s, 12) for s in specs]
    collect(CollectConfig(manifest=man, drafter=str(d), verifier=str(v), out=tmp_path / "trace", policies=pols,
                          max_new_tokens=12, edge_threads=None, timing_repeats=1, probes=False))
    out = tmp_path / "val.parquet"
    args = ["validate", "--trace", str(tmp_path / "trace"), "--drafter", str(d), "--verifier", str(v), "--rtt",
            "30ms,10ms", "--policy", ";".join(["edge-only", "cloud-only"] + specs), "--calibrations", "2",
            "--repeats", "2", "--out", str(out)]
    res = CliRunner().invoke(main, args)
    return res, args, out, pols


def test_validate_end_to_end(validated):
    import polars as pl
    from click.testing import CliRunner

    from sectrace.cli import main

    res, args, out, pols = validated
    assert res.exit_code == 0, res.output
    df = pl.read_parquet(out)
    assert df.height == 2 * 4 * 2 * 2
    assert df["caption_match"].all() and df["covered"].all() and (df["fallbacks"] == 0).all()
    assert df["predicted_latency_s"].is_not_null().all() and (df["latency_s"] > 0).all()
    for rtt in (0.03, 0.01):  # every call crossed its own shaped path
        hybrid = df.filter((pl.col("policy") == pols[2].label) & (pl.col("rtt_s") == rtt))
        assert (hybrid["latency_s"] >= hybrid["calls"] * rtt).all()
    # interleaved: each caption runs every policy at both RTTs back to back, the first RTT alternating between
    # captions and repeats; the repeats go round the captions again (not back to back), the policy order rotated
    assert df["seq"].to_list() == list(range(32)) and df["started_s"].is_sorted()
    assert df["utt_id"].to_list() == (["u0"] * 8 + ["u1"] * 8) * 2 and df["repeat"].to_list() == [0] * 16 + [1] * 16
    assert df["rtt_s"].to_list()[:4] == [0.03, 0.01, 0.03, 0.01] and df["rtt_s"].to_list()[8:10] == [0.01, 0.03]
    assert df["rtt_s"].to_list()[16:18] == [0.01, 0.03] and df["rtt_s"].to_list()[24:26] == [0.03, 0.01]
    labels = [p.label for p in pols]
    assert df["policy"].to_list()[0:8:2] == labels and df["policy"].to_list()[16:24:2] == labels[1:] + labels[:1]
    assert df.group_by("rtt_s", "policy", "utt_id").len()["len"].to_list() == [2] * 16
    facts = json.loads(out.with_suffix(".json").read_text())
    assert facts["runs"] == 32 and facts["captions_match"] == 32 and facts["repeats"] == 2
    assert sorted({r["round"] for r in facts["calibration"]}) == [1, 2]  # before and after the live runs
    assert "30ms" in res.output and "10ms" in res.output and "noise: identical edge-only runs" in res.output
    assert 0 <= facts["noise_median_ad"] <= facts["noise_max_ad"]
    again = CliRunner().invoke(main, args)  # never clobbers without --force
    assert again.exit_code == 2 and "--force" in again.output


def test_validate_reports_medians_of_repeats_with_intervals(validated):
    """Per cell the error is the simulator's against the median of its repeats; per condition the bias is their
    mean, its interval brackets it; the targets are recorded and printed with theirs."""
    import polars as pl

    res, args, out, pols = validated
    df = pl.read_parquet(out)
    facts = json.loads(out.with_suffix(".json").read_text())
    conds = {(c["rtt_s"], c["policy"]): c for c in facts["conditions"]}
    assert len(conds) == 8
    for (rtt, pol), c in conds.items():
        runs = df.filter((pl.col("rtt_s") == rtt) & (pl.col("policy") == pol))
        errs = []
        for _, g in runs.group_by("utt_id"):
            a, b = sorted(g["latency_s"].to_list())
            errs.append(g["predicted_latency_s"][0] / ((a + b) / 2) - 1)  # the median of two runs is their mean
        assert c["bias_latency"] == pytest.approx(sum(errs) / 2, rel=1e-9)
        assert c["median_ape_latency"] == pytest.approx((abs(errs[0]) + abs(errs[1])) / 2, rel=1e-9)
        lo, hi = c["bias_latency_ci"]
        assert lo <= c["bias_latency"] <= hi and c["repeats"] == 2 and c["utterances"] == 2
        assert c["noise"] is not None and c["noise"] >= 0
    t = facts["targets"]
    assert t["median_ape_latency"]["target"] == 0.02 and t["median_ape_ttft"]["target"] == 0.05
    assert t["abs_bias_latency"]["target"] == 0.02
    worst = max(abs(c["bias_latency"]) for c in conds.values())
    assert t["abs_bias_latency"]["value"] == pytest.approx(worst)
    assert t["abs_bias_latency"]["met"] == (worst <= 0.02)
    for name in ("median_ape_latency", "median_ape_ttft"):
        lo, hi = t[name]["ci"]
        assert lo <= t[name]["value"] <= hi and t[name]["met"] == (t[name]["value"] <= t[name]["target"])
    assert facts["median_ape_latency"] == t["median_ape_latency"]["value"]
    assert facts["noise_repeats"] is not None and facts["noise_repeats"] <= facts["noise_repeats_max"]
    out_text = res.output
    assert "target median |error| on total latency <= 2.0%" in out_text and "95% CI [" in out_text
    assert "target every condition's |bias| <= 2.0%" in out_text and "noise floor: a cell's repeats" in out_text


def test_validate_writes_per_event_residuals_that_add_up(validated):
    """Every aligned run's event types: live stretches add up to its measured latency, simulated ones to its
    predicted latency, and a verify call's round trip holds the service's time and at least the RTT."""
    import polars as pl

    res, args, out, pols = validated
    df = pl.read_parquet(out)
    ev = pl.read_parquet(out.with_suffix(".events.parquet"))
    assert df["events_aligned"].all() and set(ev["seq"].unique()) == set(df["seq"])
    per_run = ev.group_by("seq").agg(pl.col("live_s").sum(), pl.col("sim_s").sum(),
                                     pl.col("residual_s").sum(), pl.col("share_of_error").sum())
    both = df.join(per_run, on="seq", suffix="_ev")
    assert (both["live_s"] - both["latency_s"]).abs().max() <= 1e-6  # events.SUM_TOLERANCE_S
    assert (both["sim_s"] - both["predicted_latency_s"]).abs().max() <= 1e-6
    assert (both["residual_s"] - (both["predicted_latency_s"] - both["latency_s"])).abs().max() <= 1e-6
    assert (both["share_of_error"] - 1).abs().max() <= 1e-6
    types = {p: set(ev.filter(pl.col("policy") == p)["event"]) for p in ev["policy"].unique()}
    edge, cloud, always, stateless = (p.label for p in pols)
    assert types[edge] == {"edge prefill", "draft step", "gate", "caption end"}
    assert types[cloud] == {"cloud stream start", "cloud step"}
    assert {"edge prefill", "draft step", "gate", "verify call (opens session)", "caption end"} <= types[always]
    assert {"edge prefill", "gate", "caption end"} <= types[stateless] and "verify call (opens session)" not in \
        types[stateless]
    calls = df.filter(pl.col("policy") == always)
    if (calls["escalations"] > 1).any():
        assert "verify call" in types[always]
    # counts: one edge prefill per run, a gate per block, a verify per escalation (both sides count alike)
    for seq, g in ev.group_by("seq"):
        row = df.filter(pl.col("seq") == seq[0]).row(0, named=True)
        c = dict(zip(g["event"], g["count"]))
        if row["policy"] != cloud:
            assert c["edge prefill"] == 1 and c["caption end"] == 1
            verify = sum(v for k, v in c.items() if k.startswith("verify call"))
            assert verify == row["escalations"] == row["calls"]
    v = ev.filter(pl.col("event").str.starts_with("verify call"))
    assert (v["live_service_s"] > 0).all() and (v["live_service_s"] <= v["live_roundtrip_s"]).all()
    assert (v["live_roundtrip_s"] <= v["live_s"]).all() and (v["live_roundtrip_s"] >= v["count"] * v["rtt_s"]).all()
    assert (v["sim_network_s"] >= v["count"] * v["rtt_s"]).all()
    assert "which event type carries the error" in res.output and always[:30] in res.output


def test_validate_and_serve_refuse_bad_input(live, tmp_path):
    from click.testing import CliRunner

    from sectrace.cli import main

    pair, srv, app, root, d, v = live
    r = CliRunner().invoke(main, ["serve", "--verifier", str(v), "--no-auth", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "loopback" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["validate", "--trace", str(tmp_path / "nope"), "--drafter", str(d), "--verifier", str(v),
                                  "--out", str(tmp_path / "o.parquet")])
    assert r.exit_code == 2 and "does not exist" in r.output
