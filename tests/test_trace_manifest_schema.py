"""The trace loader checks manifest.json against its declared schema and the tables' values at the door.

Each broken input here once passed ``trace info`` as valid and then crashed ``simulate`` with a
traceback, or priced nonsense (a negative prompt gave a TTFT of -4426 ms). Now each is one
sentence naming the field and the fix, exit code 2 from both commands; and what loads, runs.
"""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest
from click.testing import CliRunner

from sectrace.cli import main
from sectrace.trace import TraceError, load_trace, sample_trace_path, write_trace
from sectrace.trace import schema as S
from sectrace.trace.io import check_manifest


@pytest.fixture
def copy(small_trace_path, tmp_path):
    dst = tmp_path / "t"
    shutil.copytree(small_trace_path, dst)
    return dst


def _manifest(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def fn(m):
        d = m
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return fn


def _table(name, fn):
    def breaker(path):
        fn(pl.read_parquet(path / f"{name}.parquet")).write_parquet(path / f"{name}.parquet")
    return breaker


def _raw(text):
    def breaker(path):
        (path / "manifest.json").write_text(text)
    return breaker


def _nest(depth):
    def breaker(path):
        m = json.loads((path / "manifest.json").read_text())
        body = json.dumps(m)[:-1] + ', "x_extra": ' + "[" * depth + "]" * depth + "}"
        (path / "manifest.json").write_text(body)
    return breaker


def _first_row(col, value, dtype):
    """Set ``col`` of the first row to ``value`` (as ``dtype``), the rest unchanged."""
    return lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(value, dtype=dtype)).otherwise(pl.col(col).cast(dtype))
        .alias(col))


BREAKERS = {
    # manifest fields of the wrong type or size: (breaker, phrase the sentence must contain)
    "drafter is a number": (lambda p: _manifest(p, _set("drafter", 5)), "field 'drafter' is 5"),
    "dataset is null": (lambda p: _manifest(p, _set("dataset", None)), "field 'dataset' is null"),
    "eos id is a string": (lambda p: _manifest(p, _set("eos_token_ids", ["x"])), "field 'eos_token_ids[0]'"),
    "decoding is null": (lambda p: _manifest(p, _set("decoding", None)), "field 'decoding' is null"),
    "max_new_tokens is text": (lambda p: _manifest(p, _set("decoding", "max_new_tokens", "lots")),
                               "field 'decoding.max_new_tokens' is \"lots\""),
    "max_new_tokens enormous": (lambda p: _manifest(p, _set("decoding", "max_new_tokens", 10**30)),
                                "'decoding.max_new_tokens'"),
    "eos id beyond int32": (lambda p: _manifest(p, _set("eos_token_ids", [2**40])), "'eos_token_ids[0]'"),
    "vocab size negative": (lambda p: _manifest(p, _set("verifier", "vocab_size", -1)), "'verifier.vocab_size'"),
    "drafter name a number": (lambda p: _manifest(p, _set("drafter", "name", 7)), "'drafter.name'"),
    "modes a string": (lambda p: _manifest(p, _set("verifier_modes", "audio")), "'verifier_modes'"),
    "modes repeat": (lambda p: _manifest(p, _set("verifier_modes", ["audio", "audio"])), "'verifier_modes'"),
    "synthetic a string": (lambda p: _manifest(p, _set("synthetic", "no")), "'synthetic'"),
    "synthetic model alpha NaN": (lambda p: _manifest(p, _set("synthetic_model", "alpha", float("nan"))),
                                  "'synthetic_model.alpha'"),
    "hardware a list": (lambda p: _manifest(p, _set("hardware", [])), "'hardware'"),
    "dataset name a number": (lambda p: _manifest(p, _set("dataset", "name", 3)), "'dataset.name'"),
    "greedy false": (lambda p: _manifest(p, _set("decoding", "greedy", False)), "greedy decoding only"),
    "schema version true": (lambda p: _manifest(p, _set("schema_version", True)), "schema version True"),
    "integer of 5000 digits": (_raw('{"schema_version": 1, "x": ' + "9" * 5000 + "}"), "too many digits"),
    "nested 100000 deep": (_nest(100_000), "nests JSON deeper"),
    "nested 40 deep": (_nest(40), "nests JSON deeper"),
    "manifest of 5 MB": (lambda p: _manifest(p, _set("padding", "x" * (5 * 1024 * 1024))), "over the"),
    # table values
    "negative cloud prompt": (_table("utterances", _first_row("cloud_prompt_tokens", -4426, pl.Int32)),
                              "column 'cloud_prompt_tokens' holds -4426"),
    "negative edge prompt": (_table("utterances", _first_row("edge_prompt_tokens", -1, pl.Int32)),
                             "'edge_prompt_tokens'"),
    "negative feature bytes": (_table("utterances", _first_row("feature_bytes", -5, pl.Int64)), "'feature_bytes'"),
    "negative raw bytes": (_table("utterances", _first_row("raw_audio_bytes", -5, pl.Int64)), "'raw_audio_bytes'"),
    "audio seconds NaN": (_table("utterances", _first_row("audio_seconds", float("nan"), pl.Float64)),
                          "'audio_seconds' holds NaN"),
    "audio seconds negative": (_table("utterances", _first_row("audio_seconds", -2.0, pl.Float64)),
                               "'audio_seconds'"),
    "prompt tokens beyond int32": (_table("utterances", _first_row("blind_prompt_tokens", 2**33, pl.Int64)),
                                   "outside the int32 range"),
    "depth beyond int32": (_table("nodes", lambda d: d.with_columns(
        pl.when(pl.col("parent_id").is_not_null() & (pl.int_range(pl.len()) == 3)).then(pl.lit(2**31 + 5))
        .otherwise(pl.col("depth").cast(pl.Int64)).alias("depth"))), "column 'depth' holds 2147483653"),
    "node id beyond int32": (_table("nodes", lambda d: d.with_columns(pl.col("node_id").cast(pl.Int64) + 2**31)),
                             "column 'node_id'"),
    "timing NaN": (_table("timings", _first_row("seconds", float("nan"), pl.Float64)), "NaN"),
    "timing negative tokens": (_table("timings", _first_row("new_tokens", -3, pl.Int32)), "'new_tokens'"),
    "drafter entropy infinite": (_table("nodes", lambda d: d.with_columns(
        pl.when(pl.col("d_entropy").is_not_null()).then(float("inf")).alias("d_entropy"))), "'d_entropy'"),
}


@pytest.mark.parametrize("name", list(BREAKERS))
def test_bad_manifest_or_table_is_one_sentence_everywhere(copy, name):
    breaker, phrase = BREAKERS[name]
    breaker(copy)
    with pytest.raises(TraceError) as err:
        load_trace(copy)
    msg = str(err.value)
    assert phrase in msg, msg
    assert "\n" not in msg and len(msg) < 400
    for cmd in (["trace", "info", str(copy)], ["simulate", "--trace", str(copy)]):
        res = CliRunner().invoke(main, cmd)
        assert res.exit_code == 2, (cmd, res.output)
        assert "Traceback" not in res.output and phrase in res.output
        assert len(res.output.strip().splitlines()) == 1


def test_messages_name_the_fix(copy):
    _manifest(copy, _set("decoding", "max_new_tokens", "lots"))
    with pytest.raises(TraceError, match="a whole number from 1 to 1000000; give the caption length cap"):
        load_trace(copy)


def test_bundled_and_synthetic_traces_load_and_their_manifests_pass(small_trace_path):
    for path in (sample_trace_path(), small_trace_path):
        tr = load_trace(path)
        check_manifest(tr.manifest)
        assert tr.utterances.height > 0
        for col in ("edge_prompt_tokens", "cloud_prompt_tokens", "blind_prompt_tokens", "feature_bytes",
                    "raw_audio_bytes"):
            assert tr.utterances[col].min() >= 0
        res = CliRunner().invoke(main, ["trace", "info", str(path)])
        assert res.exit_code == 0 and "valid       yes" in res.output


def test_the_smallest_manifest_the_schema_allows_runs_simulate(copy):
    """The declared schema asks for no more than readers use: this bare manifest loads and simulates."""
    _manifest(copy, lambda m: (m.clear(), m.update({
        "schema_version": 1, "tool_version": "other-tool 1.0", "created": "2025-01-01T00:00:00+00:00",
        "synthetic": True, "drafter": {"name": "d", "revision": "r", "vocab_size": 200, "tokenizer_fingerprint": "f"},
        "verifier": {"name": "v", "revision": "r", "vocab_size": 200, "tokenizer_fingerprint": "f"},
        "eos_token_ids": [0], "verifier_modes": ["audio", "blind"], "prompt_template": "", "decoding": {},
        "hardware": {}, "dataset": {}})))
    tr = load_trace(copy)
    assert tr.name == "t"  # no dataset name: the folder's
    res = CliRunner().invoke(main, ["simulate", "--trace", str(copy), "--rtt", "50ms"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["trace", "info", str(copy)])
    assert res.exit_code == 0 and "valid       yes" in res.output


def test_every_declared_field_is_checked(small_trace):
    """Walk the declared schema: a wrong type for each field, one at a time, is refused naming that field."""
    def walk(fields, prefix):
        for key, spec in fields.items():
            yield prefix + (key,), spec
            if spec.kind == "object" and spec.fields:
                yield from walk(spec.fields, prefix + (key,))

    checked = 0
    for keys, spec in walk(S.MANIFEST, ()):
        if spec.kind == "any" or keys == ("schema_version",):
            continue
        m = json.loads(json.dumps(small_trace.manifest))
        m.setdefault("collection", {"id": "x", "shard": [0, 1]})
        m.setdefault("exploration", {})
        d = m
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = {"str": 1, "int": "1", "number": "1", "bool": 1, "object": [], "list": {}}[spec.kind]
        with pytest.raises(TraceError, match=f"field '{'.'.join(keys)}' is "):
            check_manifest(m)
        checked += 1
    assert checked >= 25


def test_write_trace_refuses_a_bad_manifest_and_leaves_nothing(small_trace, tmp_path):
    t = small_trace
    bad = {**t.manifest, "decoding": None}
    with pytest.raises(TraceError, match="'decoding'"):
        write_trace(tmp_path / "x", bad, t.utterances, t.nodes, t.timings, t.vocab)
    huge = t.nodes.with_columns(pl.col("depth").cast(pl.Int64) + 2**32)
    with pytest.raises(TraceError, match="outside the int32 range"):
        write_trace(tmp_path / "y", t.manifest, t.utterances, huge, t.timings, t.vocab)
    assert list(tmp_path.iterdir()) == []
