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
import hashlib
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


# --- which dataset a trace was collected from, and finding it again -------------------------------------------
CONTENT_BITS = 128


def row_digest(u: Utterance) -> int:
    """What a collection reads from one row (id, text, references, emotion, the audio file's name), as a number.

    The audio's *name*, not its folder: the same data set unpacked elsewhere, or listed with absolute
    paths instead of relative ones, is the same content."""
    row = {"utt_id": u.utt_id, "audio": u.audio.name if u.audio is not None else None, "text": u.text,
           "references": list(u.references), "emotion": u.emotion}
    blob = json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[: CONTENT_BITS // 8], "big")


def content_sha(utts: list[Utterance]) -> str:
    """The content hash of these rows: the sum of their digests modulo 2^128, so it depends on neither the rows'
    order nor the manifest's other rows, and the shards of one collection add up to the whole
    (:func:`add_content`)."""
    total = sum(row_digest(u) for u in utts) % (1 << CONTENT_BITS)
    return f"sum128:{total:032x}"


def add_content(shas: list[str]) -> str | None:
    """The content hash of disjoint row sets joined (shards merged); None when any is unknown."""
    total = 0
    for sha in shas:
        if not sha or not str(sha).startswith("sum128:"):
            return None
        total += int(str(sha).split(":", 1)[1], 16)
    return f"sum128:{total % (1 << CONTENT_BITS):032x}"


@dataclass
class DatasetLookup:
    """Where a trace's dataset manifest was looked for and what was found (for `trace info` and `validate`)."""

    name: str | None
    file: str | None  # the manifest's file name
    content: str | None  # the recorded content hash of the trace's rows
    n_utterances: int
    found: Path | None = None
    tried: list = field(default_factory=list)  # (path, why it was not taken)
    utterances: list[Utterance] = field(default_factory=list)  # the trace's rows, in the trace's order
    audio_missing: list[str] = field(default_factory=list)  # utt ids whose audio file is not there

    @property
    def ok(self) -> bool:
        return self.found is not None

    def problem(self) -> str:
        """One sentence: what the trace needs and how to give it."""
        what = f"its dataset manifest {self.file or '(no name recorded)'}"
        if self.name:
            what += f" ({self.name}, {self.n_utterances} utterances)"
        tried = "; ".join(f"{p}: {why}" for p, why in self.tried) or "no location recorded"
        return (f"the trace needs {what}, which is not here (looked at {tried}); give the folder that holds it "
                "with --data DIR, or the file with --manifest FILE")


def locate_dataset(dataset: dict, trace_dir: Path | None, utt_ids: list[str], manifest: Path | None = None,
                   data: Path | None = None) -> DatasetLookup:
    """Find the manifest a trace was collected from: ``manifest`` if given, else in ``data`` (the file by its
    recorded name, directly or under a folder named after the data set), else at the path recorded relative to
    the trace, else at an absolute path an older trace recorded. A candidate counts only if it lists every one
    of the trace's utterances and, where the trace recorded a content hash, with the same content: a
    different manifest of the same name never slips in. Nothing heavy is loaded (no models, no audio)."""
    recorded = dataset.get("manifest")
    file = dataset.get("file") or (Path(str(recorded)).name if recorded else None)
    look = DatasetLookup(dataset.get("name"), file, dataset.get("content_sha"), len(utt_ids))
    cands: list[Path] = []
    if manifest is not None:
        cands.append(Path(manifest))
    else:
        if data is not None:
            data = Path(data)
            if data.is_file():
                cands.append(data)
            elif file:
                cands.append(data / file)
                if look.name:
                    cands.append(data / look.name / file)
            else:
                look.tried.append((data, "the trace records no manifest file name to look for there"))
        if recorded:
            rec = Path(str(recorded))
            cands.append(rec if rec.is_absolute() or trace_dir is None else Path(trace_dir) / rec)
    for cand in cands:
        if not cand.is_file():
            look.tried.append((cand, "no such file"))
            continue
        try:
            rows = {u.utt_id: u for u in read_manifest(cand)}
        except UserError as exc:
            look.tried.append((cand, f"unreadable ({exc})"))
            continue
        missing = [i for i in utt_ids if i not in rows]
        if missing:
            look.tried.append((cand, f"lacks utterance {missing[0]!r} of the trace"))
            continue
        mine = [rows[i] for i in utt_ids]
        if look.content and content_sha(mine) != look.content:
            why = ("lists other content for the trace's utterances (texts, references or audio names differ from "
                   "the collection's)")
            look.tried.append((cand, why))
            continue
        look.found, look.utterances = cand, mine
        look.audio_missing = [u.utt_id for u in mine if u.audio is not None and not u.audio.is_file()]
        break
    return look
