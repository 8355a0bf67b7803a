"""`sectrace collect` killed at every phase resumes to the uninterrupted trace and leaves nothing behind.

A kill is simulated by patching the function that runs at that moment so it raises
``Killed`` (a BaseException, like KeyboardInterrupt: no ``except Exception`` handler sees
it), and once, for the staging of the final trace, by ``os._exit`` in a child process
(no ``finally`` runs there, as with SIGKILL). After each kill the state must be either a
resumable run or a complete trace; rerunning the same command must give tables equal to
an uninterrupted run's, with no parts folder, staging folder or temp file left.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("soundfile")

from click.testing import CliRunner  # noqa: E402
from tiny_models import make_pair  # noqa: E402

import sectrace  # noqa: E402
from sectrace.cli import main  # noqa: E402
from sectrace.collect import collector as C  # noqa: E402
from sectrace.collect.collector import CollectConfig, collect  # noqa: E402
from sectrace.errors import UserError  # noqa: E402
from sectrace.gates import parse_policy  # noqa: E402
from sectrace.trace import load_trace  # noqa: E402

# Dotted ids: two of them shared a parts file name before (Path.with_suffix cut at the dot).
TEXTS = {"a.1": "i cannot believe you did that", "a.2": "that is wonderful news", "b": "leave me alone"}
POLICIES = ["k=1 gate=never accept=top1 features", "k=3 gate=always accept=top1 token-only",
            "k=2 gate=always accept=rank:3 features"]
MAX_NEW = 4


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so only ``finally`` blocks run."""


@pytest.fixture(scope="module", autouse=True)
def explore_once():
    """Explore each utterance once per module and hand out copies after that.

    Exploration is deterministic (test_collect_run checks a real resume against a real
    whole run, and the child-process test below does too); what these tests exercise is
    the file choreography around it, so repeating the model calls would only cost minutes.
    """
    real = C._collect_one
    memo = {}

    def once(cfg, pair, backend, u, base):
        key = (u.utt_id, cfg.max_new_tokens, tuple(p.label for p in cfg.policies), cfg.modes, cfg.max_nodes)
        if key not in memo:
            memo[key] = real(cfg, pair, backend, u, base)
        st = memo[key]
        return {**copy.deepcopy({k: v for k, v in st.items() if k != "nodes"}), "nodes": st["nodes"].clone()}

    mp = pytest.MonkeyPatch()
    mp.setattr(C, "_collect_one", once)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    _, d, v = make_pair(root)
    manifest = root / "data.jsonl"
    manifest.write_text("".join(json.dumps({"utt_id": k, "references": [f"ref {k}"], "text": t}) + "\n"
                                for k, t in TEXTS.items()))
    return root, manifest, d, v


def _cfg(setup, out, **kw):
    _, manifest, d, v = setup
    base = dict(manifest=manifest, drafter=str(d), verifier=str(v), out=out, backend="causal-lm",
                policies=[parse_policy(p, MAX_NEW) for p in POLICIES], max_new_tokens=MAX_NEW, edge_threads=None,
                timing_repeats=1, probes=False)
    base.update(kw)
    return CollectConfig(**base)


@pytest.fixture(scope="module")
def whole(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "tr"
    collect(_cfg(setup, out), echo=lambda *a: None)
    return load_trace(out)


def _manifest_core(m: dict) -> dict:
    """The manifest without what legitimately differs between two runs (clock, machine state, speed)."""
    m = json.loads(json.dumps(m))
    m.pop("created")
    m.pop("hardware")  # measured now: torch's thread count, memory peaks
    m["compute"].pop("seconds_exploring")
    m["dataset"].pop("manifest")  # the data's path relative to the trace: differs when the traces lie elsewhere
    return m


def _assert_same(out: Path, whole, timings=True):
    got = load_trace(out)
    assert got.utterances.equals(whole.utterances)
    assert got.nodes.equals(whole.nodes)
    assert got.vocab.equals(whole.vocab)
    if timings:
        assert got.timings.equals(whole.timings)
    assert _manifest_core(got.manifest) == _manifest_core(whole.manifest)
    assert sorted(got.utterances["utt_id"].to_list()) == sorted(TEXTS)


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


def _assert_consistent(out: Path, whole):
    """After a kill: OUT, if present, is the complete trace; the parts, if present, are whole."""
    if out.exists():
        _assert_same(out, whole)
    parts = out.with_name(out.name + ".parts")
    if parts.exists():
        if list(parts.glob("utt-*")):
            assert (parts / "config.json").exists()
        for j in parts.glob("utt-*.json"):
            assert j.with_name(j.name[: -len(".json")] + ".nodes.parquet").exists()


def _nth(n, pred, fn):
    """Wrap ``fn`` so its n-th call with ``pred(args)`` true raises Killed instead (before or after running)."""
    seen = [0]

    def wrapped(*args, **kw):
        if pred(*args):
            seen[0] += 1
            if seen[0] == n:
                raise Killed
        return fn(*args, **kw)
    return wrapped


def _after(fn):
    """Wrap ``fn`` so it runs, then the process dies."""
    def wrapped(*args, **kw):
        fn(*args, **kw)
        raise Killed
    return wrapped


def _half_rmtree(path, *a, **kw):
    """Delete about half the files under ``path``, then die: rmtree interrupted."""
    files = sorted(p for p in Path(path).rglob("*") if p.is_file())
    for f in files[: len(files) // 2 + 1]:
        f.unlink()
    raise Killed


KILLS = {
    # phase: (attribute of the collector to patch, its replacement, what the kill must leave)
    "config write": ("_replace", lambda: _nth(1, lambda tmp, path: path.name == "config.json", C._replace),
                     "parts"),
    "first utterance, nodes temp written": (
        "_replace", lambda: _nth(1, lambda tmp, path: path.name.endswith(".nodes.parquet"), C._replace), "tmp"),
    "between an utterance's two files": (
        "_atomic_write_bytes", lambda: _nth(2, lambda path, data: path.name.startswith("utt-"),
                                            C._atomic_write_bytes), "parts"),
    "third utterance's json temp written": (
        "_replace", lambda: _nth(3, lambda tmp, path: path.name.startswith("utt-") and path.suffix == ".json",
                                 C._replace), "tmp"),
    "trace staged, not marked": ("stage_trace", lambda: _after(C.stage_trace), "staged"),
    "marked done, not renamed": ("publish_trace", lambda: _nth(1, lambda *a: True, C.publish_trace), "staged"),
    "renamed, parts not deleted": ("publish_trace", lambda: _after(C.publish_trace), "out"),
    "parts half deleted": ("_remove_tree", lambda: _half_rmtree, "out"),
}


@pytest.mark.parametrize("phase, move_away", [(k, False) for k in KILLS] + [
    (k, True) for k, (_, _, expect) in KILLS.items() if expect == "out"])
def test_kill_at_each_phase_then_rerun_gives_the_uninterrupted_trace(setup, whole, tmp_path, monkeypatch, phase,
                                                                      move_away):
    attr, make, expect = KILLS[phase]
    out = tmp_path / "run" / "tr"
    with monkeypatch.context() as mp:
        mp.setattr(C, attr, make())
        with pytest.raises(Killed):
            collect(_cfg(setup, out), echo=lambda *a: None)
    parts = out.with_name("tr.parts")
    left = _leftovers(out)
    # The kill happened where intended.
    if expect == "tmp":
        assert any(n.endswith(".tmp") for n in os.listdir(parts)), os.listdir(parts)
    if expect == "staged":
        assert any(n.startswith(".tr.tmp-") for n in left) and not out.exists(), left
    if expect == "out":
        assert out.exists()
    _assert_consistent(out, whole)
    if move_away:  # the reported case: the user moves the finished trace away and reruns
        shutil.move(out, tmp_path / "elsewhere")
    notes = []
    res = collect(_cfg(setup, out), echo=notes.append)
    assert res["complete"]
    _assert_same(out, whole)
    assert _leftovers(out) == []
    if expect == "out" and not move_away:
        assert res.get("skipped") and any("already complete" in n for n in notes)


def test_resume_skips_finished_utterances(setup, whole, tmp_path, monkeypatch):
    """Killed between the second utterance's files: the rerun starts with exactly one finished."""
    out = tmp_path / "tr"
    attr, make, _ = KILLS["between an utterance's two files"]
    with monkeypatch.context() as mp:
        mp.setattr(C, attr, make())
        with pytest.raises(Killed):
            collect(_cfg(setup, out), echo=lambda *a: None)
    starts = []
    collect(_cfg(setup, out), echo=lambda *a: None,
            progress_factory=lambda total, initial: starts.append((total, initial)) or _Bar())
    assert starts == [(3, 1)]
    _assert_same(out, whole)


class _Bar:
    def update(self, n):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def test_kill_during_probes_resumes(setup, whole, tmp_path, monkeypatch):
    import sectrace.collect.probes as P

    out = tmp_path / "tr"
    with monkeypatch.context() as mp:
        mp.setattr(P, "probe", _nth(2, lambda *a: True, P.probe))  # the cloud probe, after the edge one
        with pytest.raises(Killed):
            collect(_cfg(setup, out, probes=True), echo=lambda *a: None)
    assert not (out.with_name("tr.parts") / "timings.parquet").exists()
    collect(_cfg(setup, out, probes=True), echo=lambda *a: None)
    _assert_same(out, whole, timings=False)  # probes measure this machine now: compare their shape instead
    t = load_trace(out).timings
    assert set(t["side"].unique()) == {"edge", "cloud"}
    assert set(t["phase"].unique()) == {"prefill", "decode", "verify"}
    assert (t["seconds"] > 0).all()
    assert _leftovers(out) == []


def test_killed_while_staging_the_trace_in_a_child_process(setup, whole, tmp_path):
    """os._exit while the staged trace is being validated: no finally runs, the staging folder stays."""
    _, manifest, d, v = setup
    out = tmp_path / "tr"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "import sectrace.trace.io as io\n"
        "from sectrace.collect.collector import CollectConfig, collect\n"
        "from sectrace.gates import parse_policy\n"
        "real = io.load_trace\n"
        "def dying(path):\n"
        "    if os.path.basename(path).startswith('.'):\n"
        "        os._exit(9)  # every file of the staged trace is written; validation is next\n"
        "    return real(path)\n"
        "io.load_trace = dying\n"
        "a = sys.argv[1:]\n"
        f"collect(CollectConfig(manifest=Path(a[0]), drafter=a[1], verifier=a[2], out=Path(a[3]), backend='causal-lm',"
        f" policies=[parse_policy(p, {MAX_NEW}) for p in {POLICIES!r}], max_new_tokens={MAX_NEW},"
        " edge_threads=None, timing_repeats=1, probes=False), echo=lambda *x: None)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(sectrace.__file__).parents[1])}
    r = subprocess.run([sys.executable, "-c", script, str(manifest), str(d), str(v), str(out)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 9, r.stderr[-2000:]
    staged = [n for n in _leftovers(out) if n.startswith(".tr.tmp-")]
    assert staged and not out.exists()
    assert (tmp_path / staged[0] / "manifest.json").exists()
    _assert_consistent(out, whole)
    collect(_cfg(setup, out), echo=lambda *a: None)
    _assert_same(out, whole)
    assert _leftovers(out) == []


def test_parts_of_an_older_sectrace_half_deleted(setup, whole, tmp_path):
    """The reported failure: utterance JSONs whose nodes files were deleted (and JSONs without a
    collection id, as older versions wrote them) resume instead of failing on a missing file."""
    out = tmp_path / "tr"
    res = collect(_cfg(setup, out, stop_after=2), echo=lambda *a: None)
    assert not res["complete"]
    parts = out.with_name("tr.parts")
    jsons = sorted(parts.glob("utt-*.json"))
    assert len(jsons) == 2
    for j in jsons:  # written by an older version: no collection id
        st = json.loads(j.read_text())
        st.pop("collection")
        j.write_text(json.dumps(st))
    Path(str(jsons[0])[: -len(".json")] + ".nodes.parquet").unlink()
    starts = []
    collect(_cfg(setup, out), echo=lambda *a: None,
            progress_factory=lambda total, initial: starts.append(initial) or _Bar())
    assert starts == [1]  # one of the two stands; the half-deleted one is collected again
    _assert_same(out, whole)
    assert _leftovers(out) == []


def test_bad_manifest_row_leaves_nothing_and_the_fixed_command_runs(setup, whole, tmp_path):
    manifest = setup[1]
    bad = tmp_path / "data.jsonl"
    (tmp_path / "noise.wav").write_bytes(b"not audio at all")
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rows[2]["audio"] = "noise.wav"  # the last row: its problem used to surface after two utterances
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run" / "tr"
    with pytest.raises(UserError, match="cannot read audio"):
        collect(_cfg(setup, out, manifest=bad), echo=lambda *a: None)
    assert not out.parent.exists() or _leftovers(out) == []
    # The corrected command (the manifest fixed) runs; it is the same content as `whole`.
    bad.write_text(manifest.read_text())
    collect(_cfg(setup, out, manifest=bad), echo=lambda *a: None)
    got = load_trace(out)
    assert got.nodes.equals(whole.nodes) and got.utterances.equals(whole.utterances)


def test_failed_start_of_another_command_is_replaced_but_real_work_is_not(setup, tmp_path, monkeypatch):
    import sectrace.collect.probes as P

    out = tmp_path / "tr"
    with monkeypatch.context() as mp:  # a start that died before finishing any utterance
        mp.setattr(P, "probe", _nth(1, lambda *a: True, P.probe))
        with pytest.raises(Killed):
            collect(_cfg(setup, out, probes=True), echo=lambda *a: None)
    notes = []
    other = dict(max_new_tokens=3, policies=[parse_policy(p, 3) for p in POLICIES])
    assert collect(_cfg(setup, out, **other), echo=notes.append)["complete"]
    assert any("replacing" in n and "no finished utterances" in n for n in notes)
    assert load_trace(out).manifest["decoding"]["max_new_tokens"] == 3
    assert _leftovers(out) == []
    # With a finished utterance the parts are real work: refused, saying how to clear them.
    out2 = tmp_path / "tr2"
    collect(_cfg(setup, out2, stop_after=1), echo=lambda *a: None)
    with pytest.raises(UserError, match=r"1 finished utterance.*rm -r") as err:
        collect(_cfg(setup, out2, **other), echo=lambda *a: None)
    assert "\n" not in str(err.value)


def test_a_second_collect_on_the_same_parts_is_refused(setup, tmp_path):
    out = tmp_path / "tr"
    collect(_cfg(setup, out, stop_after=1), echo=lambda *a: None)
    parts = out.with_name("tr.parts")
    before = sorted(p.name for p in parts.iterdir())
    fd = os.open(parts / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="another `sectrace collect`"):
            collect(_cfg(setup, out), echo=lambda *a: None)
    finally:
        os.close(fd)
    assert sorted(p.name for p in parts.iterdir()) == before


@pytest.mark.parametrize("args, phrase", [
    (["--limit", "-1"], "--limit -1 is out of range"),
    (["--limit", "0"], "--limit 0 is out of range"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0 is out of range"),
    (["--max-nodes", "-3"], "--max-nodes -3 is out of range"),
    (["--timing-repeats", "0"], "--timing-repeats 0 is out of range"),
])
def test_out_of_range_options_are_one_sentence_exit_2(setup, tmp_path, args, phrase):
    _, manifest, d, v = setup
    r = CliRunner().invoke(main, ["collect", str(manifest), "--backend", "causal-lm", "--drafter", str(d),
                                  "--verifier", str(v), "--out", str(tmp_path / "tr"), *args])
    assert r.exit_code == 2, r.output
    assert phrase in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw", [dict(limit=-1), dict(limit=0), dict(max_new_tokens=0), dict(max_nodes=0)])
def test_library_refuses_out_of_range_options(setup, tmp_path, kw):
    with pytest.raises(UserError, match="must be a whole number of at least 1"):
        collect(_cfg(setup, tmp_path / "tr", **kw), echo=lambda *a: None)
    assert list(tmp_path.iterdir()) == []


def test_limit_takes_exactly_the_first_rows(setup, tmp_path):
    out = tmp_path / "tr"
    collect(_cfg(setup, out, limit=2), echo=lambda *a: None)
    assert load_trace(out).utterances["utt_id"].to_list() == list(TEXTS)[:2]
