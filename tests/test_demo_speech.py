"""The synthetic emotional speech set: plan (no tools needed) and a tiny real synthesis."""

from __future__ import annotations

import json
import shutil
import wave

import pytest
from click.testing import CliRunner

from sectrace.cli import main
from sectrace.demo.speech import EMOTIONS, load_manifest, plan, synthesise
from sectrace.errors import UserError

needs_tools = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox are not installed (apt-get install -y espeak-ng sox)")


def test_plan_is_deterministic_and_covers_every_emotion():
    a, b = plan(72, seed=7), plan(72, seed=7)
    assert [c for c, _ in a] == [c for c, _ in b]
    assert [c for c, _ in a] != [c for c, _ in plan(72, seed=8)]
    clips = [c for c, _ in a]
    assert {c.emotion for c in clips} == {e.name for e in EMOTIONS} and len(EMOTIONS) >= 5
    assert len({c.voice for c in clips}) >= 4
    for emo in EMOTIONS:  # each emotion spoken by several voices and sentences
        mine = [c for c in clips if c.emotion == emo.name]
        assert len({c.voice for c in mine}) >= 3 and len({c.transcript for c in mine}) >= 6


def test_references_are_distinct_and_well_formed():
    for clip, _ in plan(60, seed=0, n_refs=4):
        assert len(clip.references) == 4 and len(set(clip.references)) == 4
        for ref in clip.references:
            assert ref[0].isupper() and ref.endswith(".")
            assert " a a" not in ref.lower() and " a e" not in ref.lower() and " a u" not in ref.lower()


def test_prosody_follows_the_emotion():
    clips = {c.emotion: c for c, _ in plan(6, seed=0)}
    assert clips["sad"].prosody["rate"] < clips["neutral"].prosody["rate"] < clips["angry"].prosody["rate"]
    assert clips["sad"].prosody["range"] < clips["neutral"].prosody["range"] < clips["surprised"].prosody["range"]
    assert clips["sad"].prosody["volume"] < 0 < clips["angry"].prosody["volume"]


def test_bad_counts_are_user_errors():
    with pytest.raises(UserError):
        plan(0, seed=0)
    with pytest.raises(UserError):
        plan(3, seed=0, n_refs=99)


@needs_tools
def test_synthesise_three_real_clips(tmp_path):
    clips = synthesise(tmp_path / "a", n_clips=3, seed=1)
    rows = load_manifest(tmp_path / "a")
    assert [r["emotion"] for r in rows] == [c.emotion for c in clips]
    for r in rows:
        assert r["synthetic"] is True and len(r["references"]) >= 3 and r["transcript"]
        with wave.open(r["audio"]) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            assert w.getnframes() > 16000  # a sentence lasts more than a second
    card = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert card["synthetic"] is True and card["clips"] == 3
    # deterministic given the seed, down to the audio bytes
    synthesise(tmp_path / "b", n_clips=3, seed=1)
    for r in rows:
        name = r["audio"].split("/a/", 1)[1]
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@needs_tools
def test_cli_refuses_to_overwrite(tmp_path):
    out = tmp_path / "ds"
    r = CliRunner().invoke(main, ["data", "synth", str(out), "-n", "2"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["data", "synth", str(out), "-n", "2"])
    assert r.exit_code == 2 and "--force" in r.output


def test_load_manifest_explains_a_missing_set(tmp_path):
    with pytest.raises(UserError, match="sectrace data synth"):
        load_manifest(tmp_path)
