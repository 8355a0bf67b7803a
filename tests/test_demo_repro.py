"""The demo reproduces from a fresh clone: the bundled trace says what it needs, remakes its exact dataset, the
documented validation commands resolve on it without models, a moved trace still simulates and resolves, and
validations that cannot identify their calibration say so.

No model is loaded here. Tests that speak the clips need espeak-ng and sox (skipped with the install line)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from sectrace.cli import main
from sectrace.models.dataset import Utterance, read_manifest
from sectrace.trace import load_trace, sample_trace_path

ROOT = Path(__file__).resolve().parents[1]
needs_tools = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox are not installed (apt-get install -y espeak-ng sox)")


def _hand_content(rows: list[dict]) -> str:
    """The content hash recomputed from plain rows, independently of models.dataset."""
    total = 0
    for r in rows:
        canon = {"utt_id": r["utt_id"], "audio": r["audio"], "text": r["text"], "references": r["references"],
                 "emotion": r["emotion"]}
        total += int.from_bytes(hashlib.sha256(json.dumps(canon, sort_keys=True, ensure_ascii=False).encode())
                                .digest()[:16], "big")
    return f"sum128:{total % (1 << 128):032x}"


def test_the_bundled_trace_records_what_remakes_its_dataset():
    tr = load_trace(sample_trace_path())
    ds = tr.manifest["dataset"]
    assert not str(ds.get("manifest", "")).startswith("/"), "no path from the collecting machine"
    rec = ds["recipe"]
    assert rec["synth"] == {"clips": 72, "seed": 0, "references": 3}
    assert rec["utt_ids"] == tr.utterances["utt_id"].to_list()
    # Each recorded text is as long as the text the collection measured (utterances.feature_bytes).
    for row in tr.utterances.iter_rows(named=True):
        assert len(rec["texts"][row["utt_id"]].encode("utf-8")) == row["feature_bytes"], row["utt_id"]
    rows = [{"utt_id": r["utt_id"], "audio": f"{r['utt_id']}.wav", "text": rec["texts"][r["utt_id"]],
             "references": r["references"], "emotion": r["emotion"]} for r in tr.utterances.iter_rows(named=True)]
    assert ds["content_sha"] == _hand_content(rows)


def test_the_recorded_texts_are_the_collections_own():
    """The file the collection read is rebuilt byte for byte from the recorded texts, as `sectrace demo data DIR`
    writes it (audio paths relative to it; the bundled trace was re-collected from such a file, docs/demo.md), and
    hashes to the manifest_sha the collection recorded."""
    tr = load_trace(sample_trace_path())
    ds = tr.manifest["dataset"]
    texts = ds["recipe"]["texts"]
    lines = [json.dumps({"utt_id": r["utt_id"], "audio": f"data/audio/{r['utt_id']}.wav",
                         "references": r["references"], "emotion": r["emotion"], "text": texts[r["utt_id"]]},
                        ensure_ascii=False) + "\n"
             for r in tr.utterances.iter_rows(named=True)]
    digest = hashlib.sha256("".join(lines).encode()).hexdigest()[:24]
    assert f"sha256:{digest}" == ds["manifest_sha"] == tr.manifest["collection"]["identity"]["manifest_sha"]


def test_info_says_what_the_trace_needs(tmp_path):
    r = CliRunner().invoke(main, ["trace", "info"])
    assert r.exit_code == 0, r.output
    needs = [ln for ln in r.output.splitlines() if ln.startswith("needs")]
    assert needs and "collect.jsonl" in needs[0] and "not here" in needs[0]
    assert "sectrace demo data" in r.output and "--data" in r.output
    r = CliRunner().invoke(main, ["trace", "info", "--data", str(tmp_path)])
    assert r.exit_code == 0 and str(tmp_path / "collect.jsonl") in r.output


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are not installed (apt-get install -y espeak-ng sox)")
    out = tmp_path_factory.mktemp("demo") / "data"
    r = CliRunner().invoke(main, ["demo", "data", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_demo_data_remakes_the_exact_rows(demo_data):
    tr = load_trace(sample_trace_path())
    rows = read_manifest(demo_data / "collect.jsonl")
    assert [u.utt_id for u in rows] == tr.utterances["utt_id"].to_list()
    refs = dict(zip(tr.utterances["utt_id"].to_list(), tr.utterances["references"].to_list()))
    for u, row in zip(rows, tr.utterances.iter_rows(named=True)):
        assert u.references == refs[u.utt_id] and u.emotion == row["emotion"]
        assert len(u.text.encode()) == row["feature_bytes"]
        assert u.audio.is_file() and u.audio.stat().st_size > 44  # spoken again, checked against the trace's lengths
    # Audio paths are relative inside the manifest: the folder can move.
    assert all(not json.loads(line)["audio"].startswith("/")
               for line in (demo_data / "collect.jsonl").read_text().splitlines())
    r = CliRunner().invoke(main, ["trace", "info", "--data", str(demo_data)])
    assert "found at" in r.output and "audio: 12 of 12 files present" in r.output


def test_demo_collect_on_the_remade_data_keeps_the_recorded_texts(demo_data, tmp_path):
    """docs/demo.md's regeneration: `sectrace demo collect --work DIR` on what `sectrace demo data DIR` wrote picks
    the bundled trace's clips and keeps its recorded front-end texts; the front end never runs, so the collection
    reads the bundled trace's exact rows (its content hash, recomputed here by hand)."""
    from sectrace.demo.recipe import build

    work = tmp_path / "work"
    shutil.copytree(demo_data, work)

    def front_end_must_not_run(path):
        raise AssertionError(f"the front end ran on {path}")

    manifest, recipe = build(work, describe=front_end_must_not_run)
    tr = load_trace(sample_trace_path())
    assert recipe["utt_ids"] == tr.utterances["utt_id"].to_list()
    assert recipe["texts"] == tr.manifest["dataset"]["recipe"]["texts"]
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    hand = [{**r, "audio": Path(r["audio"]).name} for r in rows]
    assert _hand_content(hand) == tr.manifest["dataset"]["content_sha"]
    # the very file the bundled trace's collection read, byte for byte
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:24]
    assert f"sha256:{digest}" == tr.manifest["dataset"]["manifest_sha"]


def _doc_block(doc: str, first: str) -> list[str]:
    """The `sectrace` command lines of the fenced block in ``doc`` that holds a line starting with ``first``."""
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    for block in re.findall(r"```[a-z]*\n(.*?)\n```", text, re.S):
        joined = block.replace("\\\n", " ")
        cmds = [ln.split(" #")[0].strip() for ln in joined.splitlines() if ln.strip().startswith("sectrace ")]
        if any(c.startswith(first) for c in cmds):
            return cmds
    raise AssertionError(f"docs/{doc} has no block with `{first}`")


@needs_tools
@pytest.mark.parametrize("doc,first", [("live.md", "sectrace validate --trace src/sectrace/data/sample-trace"),
                                       ("demo.md", "sectrace demo validate")])
def test_the_documented_validation_resolves_without_models(doc, first, tmp_path, monkeypatch):
    """The docs' lines run as written, from a fresh directory holding the source tree, with --dry-run added to
    the validation: arguments parse, the dataset is remade or found, the plan is printed, no model loads."""
    (tmp_path / "src").symlink_to(ROOT / "src")
    monkeypatch.chdir(tmp_path)
    cmds = [c for c in _doc_block(doc, first) if c.startswith((first, "sectrace demo data"))]  # never a collect
    assert cmds[-1].startswith(first)
    for cmd in cmds:
        args = [os.path.expanduser(a) for a in shlex.split(cmd)[1:]]
        if cmd.startswith(first):
            args.append("--dry-run")
        r = CliRunner().invoke(main, args, catch_exceptions=False)
        assert r.exit_code == 0, f"{doc}: `{cmd}`: {r.output}"
    out = r.stdout
    assert "dry run: no model loaded" in out and "utterances   6:" in out
    assert re.search(r"dataset +.*build/demo-data/collect\.jsonl", out)
    cal = re.search(r"calibration  (.*)", out).group(1)
    assert "(110 tokens)" in cal and "(117 tokens)" in cal  # spans the trace's prompts, shortest to longest
    assert "warning" not in out and "72 live decodes" in out


def test_a_moved_trace_still_simulates_and_resolves_its_data(tmp_path):
    from sectrace.validate.run import ValidateConfig, plan

    moved = tmp_path / "a" / "b" / "moved"
    shutil.copytree(sample_trace_path(), moved)
    before = json.loads(CliRunner().invoke(main, ["simulate", "--rtt", "50ms", "--json"]).stdout)
    r = CliRunner().invoke(main, ["simulate", "--trace", str(moved), "--rtt", "50ms", "--json"])
    assert r.exit_code == 0, r.output
    after = json.loads(r.stdout)
    for doc in (before, after):  # where the trace lies and the command that named it: the rest must be equal
        for key in ("trace_path", "command"):
            doc["provenance"].pop(key)
    assert after == before
    # Its dataset, written from the recorded rows with stand-in audio, is found under --data by name and content.
    tr = load_trace(moved)
    rec = tr.manifest["dataset"]["recipe"]
    data = tmp_path / "elsewhere"
    (data / "data" / "audio").mkdir(parents=True)
    with (data / "collect.jsonl").open("w") as fh:
        for r in tr.utterances.iter_rows(named=True):
            (data / "data" / "audio" / f"{r['utt_id']}.wav").write_bytes(b"RIFF")
            fh.write(json.dumps({"utt_id": r["utt_id"], "audio": f"data/audio/{r['utt_id']}.wav",
                                 "references": r["references"], "emotion": r["emotion"],
                                 "text": rec["texts"][r["utt_id"]]}) + "\n")
    from sectrace.protocol import drafter_only

    cfg = ValidateConfig(moved, "d", "v", [drafter_only(32)], [0.02, 0.05], tmp_path / "v.parquet", data=data,
                         limit=4)
    p = plan(cfg)
    assert p["manifest"] == data / "collect.jsonl" and [u.utt_id for u in p["utterances"]] == \
        tr.utterances["utt_id"].to_list()[:4]
    assert p["noise_note"] is None and p["warnings"] == []
    # A row edited after the collection is not the trace's dataset.
    lines = (data / "collect.jsonl").read_text().splitlines()
    row = json.loads(lines[3])
    row["text"] = row["text"].replace("Transcript", "transcript")
    lines[3] = json.dumps(row)
    (data / "collect.jsonl").write_text("\n".join(lines) + "\n")
    from sectrace.errors import UserError

    with pytest.raises(UserError, match="other content"):
        plan(cfg)


def test_calibration_that_cannot_identify_its_model_says_so():
    from sectrace.protocol import cloud_only, drafter_only
    from sectrace.validate.run import calibration_checks, calibration_choice

    tr = load_trace(sample_trace_path())
    lengths = dict(zip(tr.utterances["utt_id"], tr.utterances["edge_prompt_tokens"]))
    every = [Utterance(i, None, ["r"]) for i in tr.utterances["utt_id"]]
    cal = calibration_choice(tr, every)
    got = sorted(lengths[u.utt_id] for u in cal)
    assert got[0] == min(lengths.values()) and got[-1] == max(lengths.values()) and len(set(got)) == 3
    # Two neighbouring prompts (117 and 116 tokens, the first two utterances): the slope is not identified.
    two = calibration_choice(tr, every[:2])
    assert sorted(lengths[u.utt_id] for u in two) == [116, 117]
    pols = [drafter_only(32), cloud_only(32)]
    res = calibration_checks(tr, two, ["audio"], [0.05], pols, two)
    edge = [w for w in res["warnings"] if w.startswith("the edge prefill")]
    assert edge and "2 distinct prompt lengths (116, 117 tokens)" in edge[0] and "at least 3" in edge[0]
    assert "110 to 117" in edge[0]
    assert "one RTT" in res["noise_note"]
    ok = calibration_checks(tr, cal, ["audio"], [0.02, 0.05], pols)
    assert ok["warnings"] == [] and ok["noise_note"] is None
    assert "no edge-only policy" in calibration_checks(tr, cal, ["audio"], [0.02, 0.05], pols[1:])["noise_note"]
    # Blind prompts all have one length (the instruction alone): nothing to identify, nothing to warn about.
    blind = calibration_checks(tr, two, ["blind"], [0.02, 0.05], pols, two)["warnings"]
    assert not [w for w in blind if w.startswith("the cloud")] and [w for w in blind if w.startswith("the edge")]


def test_demo_collect_refuses_to_write_into_the_package():
    r = CliRunner().invoke(main, ["demo", "collect", "--out", str(sample_trace_path())])
    assert r.exit_code == 2 and "--replace-bundled" in r.output


def test_the_script_defaults_outside_the_package():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_sample_trace.py"), "--help"],
                       capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert r.returncode == 0, r.stderr
    assert "--replace-bundled" in r.stdout and "--no-probes" in r.stdout and "--clips" in r.stdout
    assert "build/demo-trace" in r.stdout
