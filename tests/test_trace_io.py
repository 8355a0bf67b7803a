"""Trace loading refuses every broken input with one clear sentence; writes are atomic."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest
from click.testing import CliRunner

from sectrace.cli import main
from sectrace.trace import TraceError, load_trace, write_trace


@pytest.fixture
def copy(small_trace_path, tmp_path):
    dst = tmp_path / "t"
    shutil.copytree(small_trace_path, dst)
    return dst


def _edit_nodes(path, fn):
    df = pl.read_parquet(path / "nodes.parquet")
    fn(df).write_parquet(path / "nodes.parquet")


def _edit_manifest(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def _breakers():
    return {
        "missing dir": (lambda p: shutil.rmtree(p), "no trace at"),
        "wrong schema version": (lambda p: _edit_manifest(p, lambda m: m.update(schema_version=99)),
                                 "schema version 99"),
        "manifest not json": (lambda p: (p / "manifest.json").write_text("{nope"), "not valid JSON"),
        "manifest field missing": (lambda p: _edit_manifest(p, lambda m: m.pop("drafter")), "'drafter'"),
        "missing column": (lambda p: _edit_nodes(p, lambda d: d.drop("d_entropy")), "'d_entropy'"),
        "wrong column type": (lambda p: _edit_nodes(p, lambda d: d.with_columns(pl.col("depth").cast(pl.Utf8))),
                              "column 'depth' has type"),
        "broken parent": (lambda p: _edit_nodes(p, lambda d: d.with_columns(
            pl.when(pl.col("node_id") == 5).then(99999).otherwise(pl.col("parent_id")).alias("parent_id"))),
            "does not exist"),
        "broken child": (lambda p: _edit_nodes(p, lambda d: d.with_columns(
            pl.when(pl.col("node_id") == 0).then(3).otherwise(pl.col("keep_child")).alias("keep_child"))),
            "is not its child"),
        "truncated parquet": (lambda p: (p / "nodes.parquet").write_bytes((p / "nodes.parquet").read_bytes()[:500]),
                              "truncated or corrupt"),
        "missing table": (lambda p: (p / "timings.parquet").unlink(), "timings.parquet is missing"),
        "milliseconds": (lambda p: pl.read_parquet(p / "timings.parquet").with_columns(
            pl.col("seconds") * 1e5).write_parquet(p / "timings.parquet"), "milliseconds"),
        "stray utterance": (lambda p: _edit_nodes(p, lambda d: d.with_columns(
            pl.when(pl.col("node_id") == 1).then(pl.lit("ghost")).otherwise(pl.col("utt_id")).alias("utt_id"))),
            "ghost"),
        "rank zero": (lambda p: _edit_nodes(p, lambda d: d.with_columns(
            pl.when(pl.col("v_audio_rank").is_not_null()).then(0).alias("v_audio_rank"))), "ranks start at 1"),
    }


@pytest.mark.parametrize("name", list(_breakers()))
def test_broken_trace_is_refused_clearly(copy, name):
    breaker, phrase = _breakers()[name]
    breaker(copy)
    with pytest.raises(TraceError) as err:
        load_trace(copy)
    msg = str(err.value)
    assert phrase in msg
    assert "\n" not in msg
    # And from the command line: one line on stderr, exit code 2, no traceback.
    res = CliRunner().invoke(main, ["simulate", "--trace", str(copy)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and phrase in res.output


def test_write_refuses_to_clobber_and_roundtrips(small_trace, tmp_path):
    t = small_trace
    out = write_trace(tmp_path / "x", t.manifest, t.utterances, t.nodes, t.timings, t.vocab)
    again = load_trace(out)
    assert again.nodes.equals(t.nodes.sort(["utt_id", "node_id"]))
    before = (out / "nodes.parquet").read_bytes()
    with pytest.raises(TraceError, match="already exists"):
        write_trace(out, t.manifest, t.utterances, t.nodes, t.timings)
    # A write that fails validation leaves the existing trace untouched and no temp dirs behind.
    broken = t.nodes.with_columns(pl.lit(12345, dtype=pl.Int32).alias("parent_id"))
    with pytest.raises(TraceError):
        write_trace(out, t.manifest, t.utterances, broken, t.timings, overwrite=True)
    assert (out / "nodes.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_tables_are_plain_parquet(small_trace, small_trace_path):
    """Any Parquet reader (pyarrow here) reads the same tables the loader gives, row for row."""
    import pyarrow.parquet as pq

    m = small_trace.manifest
    # What the synthetic collection wrote: 6 utterances, the nodes its exploration reports, one vocabulary
    # row per token id, and the synthetic timings (prefill: 3 prompt lengths x 3 repeats x 2 sides;
    # decode: 4 contexts x 5 repeats x 2 sides; verify: 4 contexts x 16 block sizes).
    rows = {"utterances": 6, "nodes": m["exploration"]["nodes"], "vocab": m["shared_vocab_size"],
            "timings": 3 * 3 * 2 + 4 * 5 * 2 + 4 * 16}
    for name, n in rows.items():
        df = pl.from_arrow(pq.read_table(small_trace_path / f"{name}.parquet"))
        loaded = getattr(small_trace, name)
        assert df.height == loaded.height == n, name
        assert sorted(df.columns) == sorted(loaded.columns), name
        assert df.select(loaded.columns).cast(dict(loaded.schema)).equals(loaded), name
    assert small_trace.nodes.select("utt_id", "node_id").is_unique().all()
    assert small_trace.vocab["id"].to_list() == list(range(m["shared_vocab_size"]))
