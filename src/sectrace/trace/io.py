"""Reading, validating and writing trace directories.

A trace is loaded whole and checked before anything uses it: a reader gets either a
consistent trace or one sentence saying what is wrong, never a half-loaded one.
Writes go to a temporary sibling directory that is renamed into place, so a crash
never leaves a torn trace behind and never touches one already written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ..errors import UserError
from . import schema as S


class TraceError(UserError):
    """The trace cannot be read or is inconsistent."""


@dataclass
class Trace:
    manifest: dict
    utterances: pl.DataFrame
    nodes: pl.DataFrame
    timings: pl.DataFrame
    vocab: pl.DataFrame | None = None
    path: Path | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(self.manifest["verifier_modes"])

    @property
    def synthetic(self) -> bool:
        return bool(self.manifest.get("synthetic"))

    @property
    def eos_ids(self) -> frozenset[int]:
        return frozenset(int(t) for t in self.manifest["eos_token_ids"])

    @property
    def name(self) -> str:
        return self.manifest.get("dataset", {}).get("name") or (self.path.name if self.path else "trace")

    def decode(self, tokens) -> str | None:
        """Caption text from token ids, when the trace carries the pieces (vocab.parquet)."""
        if self.vocab is None:
            return None
        pieces = self._cache.get("pieces")
        if pieces is None:
            pieces = dict(zip(self.vocab["id"].to_list(), self.vocab["piece"].to_list()))
            self._cache["pieces"] = pieces
        eos = self.eos_ids
        text = b"".join(pieces.get(t, b"\xef\xbf\xbd") for t in tokens if t not in eos)
        return text.decode("utf-8", errors="replace").strip()


# --- reading -------------------------------------------------------------------------
def _read_parquet(path: Path, what: str) -> pl.DataFrame:
    if not path.exists():
        raise TraceError(f"{path} is missing; a trace directory needs manifest.json, utterances.parquet, "
                         "nodes.parquet and timings.parquet (see docs/trace-format.md)")
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # pyarrow/polars raise many kinds for a torn file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"{path} is not a readable Parquet file ({first[:160]}); "
                         f"the {what} table is truncated or corrupt: re-collect or restore it") from None


def _check_columns(df: pl.DataFrame, wanted: dict, nullable: set, where: str, strict_extra: bool = False):
    for col, dtype in wanted.items():
        if col not in df.columns:
            raise TraceError(f"{where} lacks the column {col!r} that trace format v1 requires "
                             "(see docs/trace-format.md)")
        got = df.schema[col]
        if got != dtype and not (got == pl.Null and col in nullable):
            # Accept any integer/float width, and cast; refuse a kind mismatch.
            if got.is_numeric() and dtype.is_numeric() and got.is_integer() == dtype.is_integer():
                continue
            if got == pl.Utf8 and dtype == pl.Utf8:
                continue
            raise TraceError(f"{where} column {col!r} has type {got}, but trace format v1 says {dtype}")
        if col not in nullable and df[col].null_count():
            raise TraceError(f"{where} column {col!r} has {df[col].null_count()} missing values; "
                             "it may not be null")


def _cast(df: pl.DataFrame, wanted: dict) -> pl.DataFrame:
    return df.with_columns([pl.col(c).cast(t) for c, t in wanted.items() if df.schema[c] != t])


def load_trace(path: str | os.PathLike) -> Trace:
    """Load and validate a trace directory; raises :class:`TraceError` with one clear sentence."""
    path = Path(path)
    if not path.exists():
        raise TraceError(f"no trace at {path}: give a trace directory (made by `sectrace collect` "
                         "or `sectrace trace synth`)")
    if not path.is_dir():
        raise TraceError(f"{path} is a file, but a trace is a directory holding manifest.json and Parquet tables")
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise TraceError(f"{path} has no manifest.json, so it is not a sectrace trace directory")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TraceError(f"{mpath} is not valid JSON ({exc}); the manifest is corrupt") from None
    if not isinstance(manifest, dict):
        raise TraceError(f"{mpath} must hold a JSON object")
    version = manifest.get("schema_version")
    if version != S.SCHEMA_VERSION:
        raise TraceError(f"{path} has trace schema version {version!r}, but this sectrace reads version "
                         f"{S.SCHEMA_VERSION}; convert the trace or use a matching sectrace release")
    for key in S.MANIFEST_REQUIRED:
        if key not in manifest:
            raise TraceError(f"{mpath} lacks the required field {key!r} (see docs/trace-format.md)")
    for side in ("drafter", "verifier"):
        for key in S.MODEL_REQUIRED:
            if key not in manifest[side]:
                raise TraceError(f"{mpath}: {side} lacks the field {key!r}")
    modes = manifest["verifier_modes"]
    if not modes or any(m not in S.VERIFIER_MODES for m in modes):
        raise TraceError(f"{mpath}: verifier_modes must list one or both of {S.VERIFIER_MODES}, got {modes!r}")

    utts = _read_parquet(path / "utterances.parquet", "utterances")
    nodes = _read_parquet(path / "nodes.parquet", "nodes")
    timings = _read_parquet(path / "timings.parquet", "timings")
    vocab = _read_parquet(path / "vocab.parquet", "vocab") if (path / "vocab.parquet").exists() else None

    _check_columns(utts, S.UTTERANCES, S.UTTERANCES_NULLABLE, "utterances.parquet")
    nschema = S.nodes_schema(modes)
    vnull = {c for m in modes for c in S.verifier_columns(m)}
    _check_columns(nodes, nschema, S.NODES_NULLABLE | vnull, "nodes.parquet")
    _check_columns(timings, S.TIMINGS, S.TIMINGS_NULLABLE, "timings.parquet")
    if vocab is not None:
        _check_columns(vocab, S.VOCAB, set(), "vocab.parquet")
    utts = _cast(utts, S.UTTERANCES)
    nodes = _cast(nodes, nschema)
    timings = _cast(timings, S.TIMINGS)
    trace = Trace(manifest, utts, nodes, timings, vocab, path)
    validate(trace)
    return trace


def validate(trace: Trace) -> None:
    """Referential checks: every link in the trie points at a node that exists and fits."""
    utts, nodes, timings = trace.utterances, trace.nodes, trace.timings
    if utts.height == 0:
        raise TraceError("utterances.parquet has no rows; a trace needs at least one utterance")
    if utts["utt_id"].n_unique() != utts.height:
        raise TraceError("utterances.parquet repeats an utt_id; each utterance must appear once")
    known = set(utts["utt_id"].to_list())
    stray = set(nodes["utt_id"].unique().to_list()) - known
    if stray:
        raise TraceError(f"nodes.parquet refers to utterance {sorted(stray)[0]!r}, which utterances.parquet lacks")
    missing = known - set(nodes["utt_id"].unique().to_list())
    if missing:
        raise TraceError(f"utterance {sorted(missing)[0]!r} has no nodes; every utterance needs its trie root")
    if nodes.select(pl.struct("utt_id", "node_id").is_duplicated().any()).item():
        raise TraceError("nodes.parquet repeats a (utt_id, node_id) pair; node ids must be unique per utterance")
    roots = nodes.filter(pl.col("parent_id").is_null())
    if roots.height != utts.height or roots["utt_id"].n_unique() != utts.height:
        raise TraceError("each utterance must have exactly one root node (parent_id null)")
    if (roots["depth"] != 0).any() or roots["token"].null_count() != roots.height:
        raise TraceError("root nodes must have depth 0 and no token")
    # Parent links: parent exists, depth = parent depth + 1.
    keyed = nodes.select("utt_id", "node_id", "depth", "token", "d_token",
                         *[f"v_{m}_top1" for m in trace.modes])
    child = nodes.filter(pl.col("parent_id").is_not_null()).select("utt_id", "node_id", "parent_id", "depth", "token")
    joined = child.join(keyed.rename({"node_id": "parent_id", "depth": "p_depth", "token": "p_token"}),
                        on=["utt_id", "parent_id"], how="left")
    bad = joined.filter(pl.col("p_depth").is_null())
    if bad.height:
        r = bad.row(0, named=True)
        raise TraceError(f"node {r['node_id']} of utterance {r['utt_id']!r} names parent {r['parent_id']}, "
                         "which does not exist: the trie is broken")
    bad = joined.filter(pl.col("depth") != pl.col("p_depth") + 1)
    if bad.height:
        r = bad.row(0, named=True)
        raise TraceError(f"node {r['node_id']} of utterance {r['utt_id']!r} has depth {r['depth']}, "
                         "not its parent's depth + 1")
    # Child links: the keep child is reached by the drafter's token, a mode's child by that mode's top-1.
    links = [("keep_child", "d_token")] + [(f"v_{m}_child", f"v_{m}_top1") for m in trace.modes]
    target = nodes.select("utt_id", pl.col("node_id").alias("_c"), pl.col("parent_id").alias("_cp"),
                          pl.col("token").alias("_ct"))
    for link, tok in links:
        sub = nodes.filter(pl.col(link).is_not_null()).select("utt_id", "node_id", link, tok)
        if not sub.height:
            continue
        j = sub.join(target, left_on=["utt_id", link], right_on=["utt_id", "_c"], how="left")
        bad = j.filter(pl.col("_cp").is_null() | (pl.col("_cp") != pl.col("node_id")) | (pl.col("_ct") != pl.col(tok)))
        if bad.height:
            r = bad.row(0, named=True)
            raise TraceError(f"node {r['node_id']} of utterance {r['utt_id']!r}: {link} {r[link]} is not its child "
                             f"by token {r[tok]}; the trie is broken")
    for m in trace.modes:
        rank = nodes[f"v_{m}_rank"]
        if (rank.drop_nulls() < 1).any():
            raise TraceError(f"nodes.parquet column v_{m}_rank has values below 1; ranks start at 1 (the top-1)")
    for col, lo, hi in (("d_logprob", None, 1e-6), ("d_entropy", -1e-6, None)):
        vals = nodes[col].drop_nulls()
        if (lo is not None and (vals < lo).any()) or (hi is not None and (vals > hi).any()):
            raise TraceError(f"nodes.parquet column {col} is out of range (log-probs are <= 0, entropies >= 0, "
                             "in nats); check the units")
    if timings.height:
        if not timings["side"].is_in(list(S.TIMING_SIDES)).all():
            raise TraceError(f"timings.parquet side must be one of {S.TIMING_SIDES}")
        if not timings["phase"].is_in(list(S.TIMING_PHASES)).all():
            raise TraceError(f"timings.parquet phase must be one of {S.TIMING_PHASES}")
        if (timings["seconds"] < 0).any() or (timings["seconds"] > 3600).any():
            raise TraceError("timings.parquet seconds must lie between 0 and 3600; are they in milliseconds? "
                             "Trace format v1 stores seconds")


# --- paths inside a trace ----------------------------------------------------------------
#: Manifest fields that name files outside the trace. They are stored relative to the trace directory (POSIX),
#: so a trace copied together with its data still finds it, and one copied alone says what it lacks; an
#: absolute path (older traces) is read as it is.
PATH_FIELDS = (("dataset", "manifest"), ("exploration", "extended_from"))


def trace_relative(path: str | os.PathLike, trace_dir: str | os.PathLike) -> str:
    """``path`` relative to the directory ``trace_dir`` (which need not exist yet), as the manifest stores it."""
    return Path(os.path.relpath(Path(path).resolve(), Path(trace_dir).resolve())).as_posix()


def rebase_paths(manifest: dict, old_dir: str | os.PathLike, new_dir: str | os.PathLike) -> dict:
    """A copy of ``manifest`` whose relative path fields point at the same files from ``new_dir`` (a trace written
    elsewhere from another one's manifest, as ``trace merge`` does)."""
    out = json.loads(json.dumps(manifest))
    for section, key in PATH_FIELDS:
        value = (out.get(section) or {}).get(key)
        if value and not Path(str(value)).is_absolute():
            out[section][key] = trace_relative(Path(old_dir) / str(value), new_dir)
    return out


# --- writing -------------------------------------------------------------------------
def _frame(rows_or_df, wanted: dict) -> pl.DataFrame:
    if isinstance(rows_or_df, pl.DataFrame):
        df = rows_or_df
    else:
        df = pl.DataFrame(rows_or_df, schema=wanted, strict=False)
    extra = [c for c in df.columns if c not in wanted]
    return df.select([pl.col(c).cast(t) for c, t in wanted.items()] + extra)


def write_trace(path, manifest: dict, utterances, nodes, timings, vocab=None, overwrite: bool = False) -> Path:
    """Write a trace atomically. Refuses to replace an existing directory unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise TraceError(f"{path} already exists; choose another output or pass --force to replace it")
    modes = manifest["verifier_modes"]
    utts = _frame(utterances, S.UTTERANCES)
    nds = _frame(nodes, S.nodes_schema(modes))
    tms = _frame(timings, S.TIMINGS)
    voc = _frame(vocab, S.VOCAB) if vocab is not None else None
    manifest = {"format": S.FORMAT_NAME, **manifest, "schema_version": S.SCHEMA_VERSION}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        utts.write_parquet(tmp / "utterances.parquet")
        nds.sort(["utt_id", "node_id"]).write_parquet(tmp / "nodes.parquet", compression="zstd")
        tms.write_parquet(tmp / "timings.parquet")
        if voc is not None:
            voc.write_parquet(tmp / "vocab.parquet")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        # Check what we wrote with the same loader every reader uses.
        load_trace(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
