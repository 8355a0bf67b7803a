"""Datasets: a manifest of utterances (CSV or JSONL) and audio read as 16 kHz mono.

A row names an audio file (relative paths are relative to the manifest), one or more
reference captions, and optionally an emotion label, an utterance id and a transcript
(``text``, what a cascaded text pipeline feeds its language models).

CSV columns: ``audio``, ``reference`` (several captions separated by `` || ``) or
``reference_1``, ``reference_2``..., and optional ``utt_id``, ``emotion``, ``text``.
JSONL keys: the same, with ``references`` a list of strings.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

SAMPLE_RATE = 16000


@dataclass
class Utterance:
    utt_id: str
    audio: Path | None
    references: list[str]
    emotion: str | None = None
    text: str | None = None
    extra: dict = field(default_factory=dict)


def _refs(row: dict) -> list[str]:
    if isinstance(row.get("references"), list):
        return [str(r) for r in row["references"] if str(r).strip()]
    out = []
    for key in ("references", "reference", "caption", "captions"):
        v = row.get(key)
        if isinstance(v, str) and v.strip():
            out.extend(p.strip() for p in v.split("||") if p.strip())
    for key in sorted(k for k in row if k.startswith("reference_")):
        v = row.get(key)
        if isinstance(v, str) and v.strip():
            out.append(v.strip())
    return out


def read_manifest(path: str | Path) -> list[Utterance]:
    """Utterances in file order; refuses duplicates and rows without audio or references."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"dataset manifest {path} does not exist; give a CSV or JSONL file listing audio and "
                        "reference captions (see docs/collect.md)")
    rows: list[dict] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; save the manifest as UTF-8 CSV or JSONL") from None
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path} line {n} is not valid JSON ({exc.msg}); "
                                    "write one JSON object per line") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path} line {n} must be a JSON object")
                rows.append(row)
    else:
        rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise UserError(f"{path} lists no utterances")
    out, seen = [], set()
    for n, row in enumerate(rows, 1):
        audio = row.get("audio") or row.get("audio_path") or row.get("path")
        text_in = row.get("text") or row.get("transcript")
        if not audio and not text_in:
            raise UserError(f"{path} row {n} has no audio path (column 'audio') and no transcript ('text')")
        apath = None
        if audio:
            apath = Path(str(audio)).expanduser()
            if not apath.is_absolute():
                apath = path.parent / apath
        utt_id = str(row.get("utt_id") or row.get("id") or (apath.stem if apath else f"row{n}"))
        if utt_id in seen:
            raise UserError(f"{path} repeats utterance id {utt_id!r} (row {n}); give each row a unique utt_id")
        seen.add(utt_id)
        refs = _refs(row)
        if not refs:
            raise UserError(f"{path} row {n} ({utt_id}) has no reference caption; add a 'reference' column")
        out.append(Utterance(utt_id, apath, refs, row.get("emotion") or None, text_in or None))
    return out


def load_audio(path: Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 at ``sample_rate`` (polyphase resampling), or a clear error naming the file."""
    import soundfile as sf

    if not path.is_file():
        raise UserError(f"audio file {path} does not exist; fix the manifest's audio column")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError for unreadable files
        raise UserError(f"cannot read audio {path} ({str(exc).splitlines()[0][:120]}); convert it to WAV/FLAC "
                        "(e.g. ffmpeg -i in.mp4 -ac 1 -ar 16000 out.wav)") from None
    if data.shape[0] == 0:
        raise UserError(f"audio file {path} is empty")
    mono = data.mean(axis=1)
    if sr != sample_rate:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(int(sr), sample_rate)
        mono = resample_poly(mono, sample_rate // g, int(sr) // g).astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


def shard_of(items: list, index: int, count: int) -> list:
    """Round-robin: shard ``index`` of ``count`` (0-based) takes every count-th item."""
    return items[index::count]


def parse_shard(text: str | None, env: dict) -> tuple[int, int]:
    """``i/n`` (0-based i) from --shard, else SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, else 0/1."""
    if text:
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise UserError(f"cannot read --shard {text!r}; write i/n with 0 <= i < n, e.g. --shard 0/8") from None
    elif env.get("SLURM_ARRAY_TASK_ID") is not None and env.get("SLURM_ARRAY_TASK_COUNT"):
        i = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        n = int(env["SLURM_ARRAY_TASK_COUNT"])
    else:
        return 0, 1
    if not 0 <= i < n:
        raise UserError(f"shard {i}/{n} is out of range; the index runs from 0 to {n - 1}")
    return i, n
