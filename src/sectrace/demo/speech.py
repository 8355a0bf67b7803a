"""A small synthetic emotional speech set, made on the device with espeak-ng and sox.

Why synthetic: the study's data (MER2024) cannot be shipped or downloaded here, and the
demo needs real audio with known emotions to run the real cascaded pipeline end to end.
espeak-ng speaks scripted, emotion-neutral sentences; each emotion is a prosody profile
(pitch, pitch range, rate, loudness) applied through SSML, plus a few sox effects (tremolo for
fear, slight overdrive for anger, a darker low-pass for sadness). The captions describe what a
listener would hear. Everything is deterministic given the seed: the seed picks sentences,
voices, small per-clip prosody jitter and caption wording; espeak-ng and sox (no dither) are
deterministic themselves.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError

SAMPLE_RATE = 16000
MANIFEST = "manifest.jsonl"
DATASET_CARD = "dataset.json"

SENTENCES = [
    "The meeting has been moved to Thursday afternoon.",
    "I found the letter on the kitchen table this morning.",
    "We will be taking the train to the coast tomorrow.",
    "They painted the fence a different colour last week.",
    "The results of the test came back today.",
    "She told me the house on the corner has been sold.",
    "My brother is coming to stay with us for a month.",
    "The shop closes at six on Saturdays.",
    "He left his keys in the car again.",
    "Our flight lands a little after midnight.",
    "The dog ran out of the garden when the gate was open.",
    "I have read the whole report from start to finish.",
    "The new manager starts on Monday.",
    "They cancelled the concert at the last minute.",
    "We have to be out of the flat by the end of June.",
    "The phone rang three times during dinner.",
]


@dataclass(frozen=True)
class Emotion:
    """One emotion's prosody profile: SSML prosody in percent, plus sox effects."""

    name: str
    pitch: int  # SSML pitch change, percent of the voice's base pitch
    range: int  # SSML pitch range, percent of normal (100 = normal)
    rate: int  # SSML rate, percent of normal speed
    volume: int  # SSML volume change, percent
    sox_effects: tuple[str, ...]
    adjectives: tuple[str, ...]  # how people name the feeling
    cues: tuple[str, ...]  # what a listener hears


EMOTIONS: tuple[Emotion, ...] = (
    Emotion("neutral", 0, 100, 100, 0, (),
            ("calm", "neutral", "matter-of-fact", "composed"),
            ("a steady, level voice", "an even pace and ordinary pitch", "a plain, unemotional voice")),
    Emotion("happy", 25, 160, 115, 10, (),
            ("happy", "cheerful", "delighted", "joyful"),
            ("a bright, lively voice", "a high, bouncing pitch", "an upbeat, quick delivery")),
    Emotion("sad", -20, 50, 72, -35, ("lowpass", "3000"),
            ("sad", "downcast", "sorrowful", "dejected"),
            ("a low, flat voice", "a slow and quiet delivery", "a heavy, subdued tone")),
    Emotion("angry", 5, 140, 125, 45, ("overdrive", "6", "gain", "-4"),
            ("angry", "furious", "irritated", "annoyed"),
            ("a loud, forceful voice", "sharp, clipped words", "a harsh and tense delivery")),
    Emotion("fearful", 35, 130, 130, -15, ("tremolo", "7", "45"),
            ("fearful", "scared", "anxious", "nervous"),
            ("a trembling, high voice", "hurried, shaky words", "a tense and breathy delivery")),
    Emotion("surprised", 45, 190, 105, 20, (),
            ("surprised", "astonished", "amazed", "startled"),
            ("a sudden rise in pitch", "a wide, swooping intonation", "an exclaiming tone")),
)

# (espeak-ng voice, how a listener would describe the speaker)
VOICES = (
    ("en-us+m3", "man"),
    ("en-us+f2", "woman"),
    ("en+m1", "man"),
    ("en+f3", "woman"),
    ("en-gb-scotland+m2", "man"),
    ("en-us+f5", "woman"),
)

CAPTION_TEMPLATES = (
    "A {speaker} speaks in a {adj} way, with {cue}.",
    "The {speaker} sounds {adj}; {cue} gives it away.",
    "With {cue}, the speaker comes across as {adj}.",
    "A {adj} {speaker} says the sentence with {cue}.",
    "The speaker's emotion is {adj}, heard in {cue}.",
    "This {speaker} seems {adj}, speaking with {cue}.",
    "You can hear a {adj} mood in the {speaker}'s voice: {cue}.",
)


@dataclass
class Clip:
    """One manifest row: what the clip is, what it says, how people describe it."""

    audio: str  # path relative to the dataset folder
    emotion: str
    transcript: str
    references: list[str]
    voice: str
    speaker: str
    prosody: dict


def check_tools() -> None:
    """espeak-ng and sox are system packages; say how to get them when missing."""
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise UserError(f"{' and '.join(missing)} not found; install with: apt-get install -y espeak-ng sox")


def captions(rng: random.Random, emo: Emotion, speaker: str, n: int) -> list[str]:
    """n distinct references in varied wording: different template, adjective and cue each."""
    templates = rng.sample(CAPTION_TEMPLATES, n)
    a0, c0 = rng.randrange(len(emo.adjectives)), rng.randrange(len(emo.cues))
    out = []
    for i, t in enumerate(templates):
        adj = emo.adjectives[(a0 + i) % len(emo.adjectives)]
        cue = emo.cues[(c0 + i) % len(emo.cues)]
        text = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", t.format(speaker=speaker, adj=adj, cue=cue))
        out.append(text[0].upper() + text[1:])
    return out


def plan(n_clips: int, seed: int, n_refs: int = 3) -> list[tuple[Clip, list[str]]]:
    """Decide every clip (text, voice, prosody, captions) before any audio is made."""
    if n_clips < 1:
        raise UserError("--clips must be at least 1")
    if not 1 <= n_refs <= len(CAPTION_TEMPLATES):
        raise UserError(f"--references must be between 1 and {len(CAPTION_TEMPLATES)}")
    rng = random.Random(seed)
    sentences = SENTENCES[:]
    rng.shuffle(sentences)
    rows = []
    for i in range(n_clips):
        emo = EMOTIONS[i % len(EMOTIONS)]
        voice, speaker = VOICES[(i // len(EMOTIONS) + i) % len(VOICES)]
        text = sentences[(i // len(EMOTIONS) * 5 + i) % len(sentences)]
        prosody = {
            "pitch": emo.pitch + rng.randint(-5, 5),
            "range": max(10, emo.range + rng.randint(-10, 10)),
            "rate": emo.rate + rng.randint(-5, 5),
            "volume": emo.volume + rng.randint(-3, 3),
        }
        name = f"audio/{i:04d}_{emo.name}.wav"
        clip = Clip(name, emo.name, text, captions(rng, emo, speaker, n_refs), voice, speaker, prosody)
        rows.append((clip, list(emo.sox_effects)))
    return rows


def _ssml(text: str, p: dict) -> str:
    return (f'<speak><prosody pitch="{p["pitch"]:+d}%" range="{p["range"]}%" rate="{p["rate"]}%" '
            f'volume="{p["volume"]:+d}%">{text}</prosody></speak>')


def render(clip: Clip, effects: list[str], out_wav: Path, tmp: Path) -> None:
    """espeak-ng → 22.05 kHz WAV → sox (effects, 16 kHz mono, 16-bit, peak-normalised below clipping)."""
    raw = tmp / "raw.wav"
    _run(["espeak-ng", "-m", "-v", clip.voice, "-w", str(raw), _ssml(clip.transcript, clip.prosody)])
    # Loudness differences are part of the emotion, so normalise the set to one fixed peak
    # only to stop clipping; apply the emotion's volume after the per-clip effects.
    gain_db = 20 * math.log10(max(0.05, 1 + clip.prosody["volume"] / 100))
    _run(["sox", "-D", "-V1", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out_wav),
          *effects, "norm", "-6", "gain", f"{gain_db - 3:.2f}", "rate", str(SAMPLE_RATE)])


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise UserError(f"{cmd[0]} failed ({proc.stderr.strip() or proc.returncode}); check the install "
                        f"with: apt-get install -y espeak-ng sox")


def synthesise(out: Path, n_clips: int = 72, seed: int = 0, n_refs: int = 3, force: bool = False,
               progress: Callable[[int], None] | None = None) -> list[Clip]:
    """Write OUT/audio/*.wav, OUT/manifest.jsonl and OUT/dataset.json; return the clips."""
    check_tools()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UserError(f"{out} already exists and is not empty; choose another path or pass --force")
        shutil.rmtree(out)
    rows = plan(n_clips, seed, n_refs)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    clips = []
    with tempfile.TemporaryDirectory() as td:
        for clip, effects in rows:
            render(clip, effects, out / clip.audio, Path(td))
            clips.append(clip)
            if progress:
                progress(1)
    with open(out / MANIFEST, "w") as f:
        f.writelines(json.dumps({**asdict(c), "synthetic": True}) + "\n" for c in clips)
    card = {
        "name": "sectrace-espeak-emotions",
        "synthetic": True,
        "description": "Synthetic emotional speech: scripted sentences spoken by espeak-ng with per-emotion "
                       "prosody (SSML pitch, range, rate, volume) and sox effects. A stand-in for real "
                       "emotional speech (e.g. MER2024); the emotions are acted by rules, not people.",
        "clips": len(clips),
        "emotions": sorted({c.emotion for c in clips}),
        "voices": sorted({c.voice for c in clips}),
        "sample_rate": SAMPLE_RATE,
        "seed": seed,
        "references_per_clip": n_refs,
        "manifest": MANIFEST,
        "tools": {"espeak-ng": _version(["espeak-ng", "--version"]), "sox": _version(["sox", "--version"])},
        "made_by": "sectrace data synth",
    }
    (out / DATASET_CARD).write_text(json.dumps(card, indent=2) + "\n")
    return clips


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def load_manifest(folder: Path) -> list[dict]:
    """The rows of a synthesised set, audio paths made absolute; a clear error when it is not one."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} has no {MANIFEST}; make a dataset with: sectrace data synth {folder}")
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            row["audio"] = str(folder / row["audio"])
            rows.append(row)
    return rows
