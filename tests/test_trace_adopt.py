"""`sectrace trace adopt-probes`: a trace takes another trace's timing probes, and only those.

The bundled real trace is the source; the target is a copy of it whose probes were dropped (as a
`collect --no-probes` run leaves them) and whose hardware says it was busy. What is checked: the result's
timings are the source's row for row, the trie, utterances and vocabulary are the target's byte for byte,
the manifest says where the probes came from (with a hash computed here by hand), and traces of other
models, synthetic traces and traces without probes are refused with one sentence before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import polars as pl
import pytest
from click.testing import CliRunner

from sectrace.cli import main
from sectrace.trace import load_trace, sample_trace_path, write_trace


def _copy_without_probes(dest, **edit):
    src = load_trace(sample_trace_path())
    m = json.loads(json.dumps(src.manifest))
    m["hardware"]["probe_load"] = {"busy": True, "other_processes_cores": 1.7}
    for side, fields in edit.items():
        m[side].update(fields)
    write_trace(dest, m, src.utterances, src.nodes, src.timings.head(0), src.vocab)
    return dest


def test_adopted_probes_are_the_sources_and_nothing_else_changes(tmp_path):
    target = _copy_without_probes(tmp_path / "busy")
    before = {f.name: f.read_bytes() for f in target.iterdir() if f.name != "manifest.json"}
    res = CliRunner().invoke(main, ["trace", "adopt-probes", str(target), "--from", str(sample_trace_path())])
    assert res.exit_code == 0, res.output
    src, got = load_trace(sample_trace_path()), load_trace(target)
    assert got.timings.equals(src.timings)
    assert got.timings.height == 164
    for name in ("nodes.parquet", "utterances.parquet", "vocab.parquet"):
        assert (target / name).read_bytes() == before[name]
    buf = io.BytesIO()
    pl.read_parquet(sample_trace_path() / "timings.parquet").write_ipc(buf)
    record = got.manifest["hardware"]["timings_from"]
    assert record["timings_sha256"] == hashlib.sha256(buf.getvalue()).hexdigest()
    assert (record["trace"], record["timings"], record["previous_timings"]) == ("sample-trace", 164, 0)
    # the busy load described the target's own (dropped) probes; the source's record replaces it, here none
    assert got.manifest["hardware"].get("probe_load") == src.manifest["hardware"].get("probe_load") is None
    assert got.manifest["hardware"]["edge"] == src.manifest["hardware"]["edge"]
    assert "164 timings" in res.output and "1859 nodes" in res.output


def test_simulate_prices_the_adopted_trace_as_the_source(tmp_path):
    target = _copy_without_probes(tmp_path / "busy")
    runner = CliRunner()
    assert runner.invoke(main, ["trace", "adopt-probes", str(target), "--from", str(sample_trace_path()),
                                "--out", str(tmp_path / "priced")]).exit_code == 0
    a, b = (json.loads(runner.invoke(main, ["simulate", "--trace", str(t), "--rtt", "50ms", "--json"]).output)
            for t in (tmp_path / "priced", sample_trace_path()))
    assert a["costs"] == b["costs"]
    assert [r["latency_s"] for r in a["summary"]] == [r["latency_s"] for r in b["summary"]]
    assert len(a["summary"]) == 3 and all(r["latency_s"] > 0 for r in a["summary"])


@pytest.mark.parametrize("edit, what", [({"drafter": {"parameters": 123}}, "drafter parameters"),
                                        ({"verifier": {"dtype": "bfloat16"}}, "verifier dtype"),
                                        ({"drafter": {"tokenizer_fingerprint": "sha256:0"}},
                                         "drafter tokenizer_fingerprint")])
def test_other_models_are_refused_before_writing(tmp_path, edit, what):
    target = _copy_without_probes(tmp_path / "other", **edit)
    manifest = (target / "manifest.json").read_bytes()
    res = CliRunner().invoke(main, ["trace", "adopt-probes", str(target), "--from", str(sample_trace_path())])
    assert res.exit_code == 2
    assert what in res.output and "re-probe" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert (target / "manifest.json").read_bytes() == manifest
    assert load_trace(target).timings.height == 0


def test_a_source_without_probes_and_a_synthetic_trace_are_refused(tmp_path):
    empty = _copy_without_probes(tmp_path / "empty")
    runner = CliRunner()
    res = runner.invoke(main, ["trace", "adopt-probes", str(sample_trace_path()), "--from", str(empty),
                               "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no timing probes" in res.output and not (tmp_path / "x").exists()
    assert runner.invoke(main, ["trace", "synth", str(tmp_path / "syn"), "--utterances", "2"]).exit_code == 0
    res = runner.invoke(main, ["trace", "adopt-probes", str(tmp_path / "syn"), "--from", str(sample_trace_path())])
    assert res.exit_code == 2 and "synthetic" in res.output


def test_out_is_not_replaced_without_force(tmp_path):
    target = _copy_without_probes(tmp_path / "busy")
    shutil.copytree(target, tmp_path / "taken")
    runner = CliRunner()
    args = ["trace", "adopt-probes", str(target), "--from", str(sample_trace_path()), "--out", str(tmp_path / "taken")]
    res = runner.invoke(main, args)
    assert res.exit_code == 2 and "--force" in res.output
    assert load_trace(tmp_path / "taken").timings.height == 0
    assert runner.invoke(main, [*args, "--force"]).exit_code == 0
    assert load_trace(tmp_path / "taken").timings.height == 164
