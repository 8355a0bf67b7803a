"""Prosodic measurements from a waveform with numpy alone: pitch level and range, loudness, rate.

Why our own small tracker: the edge front end must run on a 2-core CPU with light dependencies,
and the drafter only needs coarse, robust cues (is the voice high, wide-ranging, loud, fast?).
Pitch is a window-corrected normalised autocorrelation per 40 ms frame (10 ms hop) between 70 and 450 Hz; a frame
counts as voiced when its peak correlation is at least 0.6 and its energy is within 30 dB of the
loudest frame.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

FMIN, FMAX = 70.0, 450.0


@dataclass
class Prosody:
    """Coarse measurements of one utterance; None where nothing was voiced."""

    duration_s: float  # whole clip
    speech_s: float  # from the first to the last active frame
    pitch_hz: float | None  # median F0 over voiced frames
    pitch_range_st: float | None  # 10th–90th percentile span of F0, in semitones
    loudness_dbfs: float  # RMS level of the active frames, dB relative to full scale
    voiced_fraction: float  # voiced frames / active frames
    words_per_s: float | None  # transcript words over speech time
    syllables_per_s: float | None  # a vowel-group estimate of syllables over speech time


def frames(x: np.ndarray, sr: int, win_s: float = 0.04, hop_s: float = 0.01) -> np.ndarray:
    win, hop = int(sr * win_s), int(sr * hop_s)
    if len(x) < win:
        x = np.pad(x, (0, win - len(x)))
    n = 1 + (len(x) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    return x[idx]


def pitch_track(fr: np.ndarray, sr: int, threshold: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """F0 per frame (nan where unvoiced) and the peak normalised autocorrelation."""
    fr = fr - fr.mean(axis=1, keepdims=True)
    n = fr.shape[1]
    w = np.hanning(n)
    spec = np.fft.rfft(fr * w, 2 * n, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :n]
    ac = ac / np.maximum(ac[:, :1], 1e-12)
    # Divide by the window's own autocorrelation (Boersma 1993): otherwise the taper alone pulls the
    # peak of a perfectly periodic frame down to ~0.6 at low pitches and voiced frames are missed.
    wac = np.fft.irfft(np.abs(np.fft.rfft(w, 2 * n)) ** 2)[:n]
    ac = ac / np.maximum(wac / wac[0], 1e-3)[None, :]
    lo, hi = int(sr / FMAX), min(int(sr / FMIN), n - 1)
    seg = ac[:, lo:hi]
    # Octave errors: a periodic frame correlates as well at 2T as at T, so take the shortest lag
    # that is a local maximum within 10% of the best one, not the global argmax.
    best = seg.max(axis=1, keepdims=True)
    local = np.zeros_like(seg, dtype=bool)
    local[:, 1:-1] = (seg[:, 1:-1] >= seg[:, :-2]) & (seg[:, 1:-1] >= seg[:, 2:])
    ok = local & (seg >= 0.9 * best)
    lag = np.where(ok.any(axis=1), np.argmax(ok, axis=1), np.argmax(seg, axis=1))
    peak = seg[np.arange(len(seg)), lag]
    # parabolic interpolation around the peak for sub-sample lag
    i = lag + lo
    left = ac[np.arange(len(ac)), np.clip(i - 1, 0, n - 1)]
    right = ac[np.arange(len(ac)), np.clip(i + 1, 0, n - 1)]
    denom = left - 2 * peak + right
    shift = np.where(np.abs(denom) > 1e-9, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0.0)
    f0 = sr / (i + np.clip(shift, -1, 1))
    return np.where(peak >= threshold, f0, np.nan), peak


def syllables(text: str) -> int:
    """Vowel groups per word, at least one per word: a rough, language-agnostic-enough count."""
    count = 0
    for w in re.findall(r"[a-zA-Z']+", text):
        groups = re.findall(r"[aeiouy]+", w.lower())
        n = len(groups) - (1 if w.lower().endswith("e") and len(groups) > 1 else 0)
        count += max(1, n)
    return count


def measure(x: np.ndarray, sr: int, transcript: str = "") -> Prosody:
    x = np.asarray(x, dtype=np.float64)
    fr = frames(x, sr)
    rms = np.sqrt(np.mean(fr ** 2, axis=1) + 1e-20)
    db = 20 * np.log10(rms)
    active = db > db.max() - 30
    hop = 0.01
    idx = np.flatnonzero(active)
    speech_s = (idx[-1] - idx[0] + 1) * hop + 0.03 if len(idx) else 0.0
    f0, _ = pitch_track(fr, sr)
    f0 = np.where(active, f0, np.nan)
    voiced = f0[~np.isnan(f0)]
    if len(voiced) >= 3:
        pitch = float(np.median(voiced))
        p10, p90 = np.percentile(voiced, [10, 90])
        prange = float(12 * math.log2(p90 / p10))
    else:
        pitch = prange = None
    loud = float(20 * np.log10(np.sqrt(np.mean(fr[active] ** 2)) + 1e-12)) if len(idx) else -120.0
    words = len(transcript.split())
    rate_w = words / speech_s if speech_s > 0 and words else None
    rate_s = syllables(transcript) / speech_s if speech_s > 0 and words else None
    return Prosody(duration_s=len(x) / sr, speech_s=float(speech_s), pitch_hz=pitch, pitch_range_st=prange,
                   loudness_dbfs=loud, voiced_fraction=float(len(voiced) / max(1, len(idx))),
                   words_per_s=rate_w, syllables_per_s=rate_s)


def describe_level(value: float | None, cuts: tuple[float, float], words=("low", "medium", "high")) -> str:
    if value is None:
        return "unmeasured"
    return words[0] if value < cuts[0] else words[2] if value > cuts[1] else words[1]
