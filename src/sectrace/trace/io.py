"""Reading, validating and writing trace directories.

A trace is checked whole before anything uses it: a reader gets either a consistent trace
or one sentence saying what is wrong, never a half-loaded one. The nodes table is read a
column at a time into the trie's columns (``Trace.trie``), checked as each column arrives and
then link by link on arrays, so a 10,000-utterance trace is never held as one table; the
table itself (``Trace.nodes``) is read on first use.
Writes go to a temporary sibling directory that is renamed into place, so a crash
never leaves a torn trace behind and never touches one already written.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from ..errors import UserError
from ..fsio import apply_umask, fsync, fsync_dir
from . import schema as S
from .trie import TrieColumns


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
    _trie: TrieColumns | None = field(default=None, init=False, repr=False, compare=False)
    _load_nodes: object = field(default=None, init=False, repr=False, compare=False)

    def trie(self) -> TrieColumns:
        """The trie as columns shared by every utterance's replay session, built once per trace.

        Drafts come without the drafter's top-k lists, which no gate reads (``TrieColumns``)."""
        if self._trie is None:
            extra = [c for c in self.nodes.columns if c.startswith("x_")]
            self._trie = TrieColumns(self.nodes, self.modes, extra, topk=False)
        return self._trie

    def __getstate__(self):
        """A trace sent to another process (a dask worker) carries its tables, not its trie columns: those hold
        memoryviews, which pickle refuses and dask's serialiser flattens to bytes, so the receiver builds them
        again from the nodes table (read here first if it was still lazy)."""
        state = dict(self.__dict__)
        state["_nodes"] = self.nodes
        state["_trie"] = None
        state["_load_nodes"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

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


def _get_nodes(self) -> pl.DataFrame:
    df = self.__dict__.get("_nodes")
    if df is None and self._load_nodes is not None:
        df = self.__dict__["_nodes"] = self._load_nodes()
        self._load_nodes = None
    return df


def _set_nodes(self, df):
    self.__dict__["_nodes"] = df


#: A loaded trace reads its whole nodes table only when something asks for ``trace.nodes`` (reports, merge,
#: learned gates); replay and ``trace info`` use the columns ``load_trace`` built (``Trace.trie``).
Trace.nodes = property(_get_nodes, _set_nodes)


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


def _check_int_widths(df: pl.DataFrame, wanted: dict, where: str):
    """Integer columns written wider than the format's type must still fit it, or the cast would fail."""
    for col, dtype in wanted.items():
        limits = S.INT_LIMITS.get(dtype)
        if limits is None or col not in df.columns or df.schema[col] == dtype or not df.schema[col].is_integer():
            continue
        lo, hi = df[col].min(), df[col].max()
        bad = lo if lo is not None and lo < limits[0] else hi if hi is not None and hi > limits[1] else None
        if bad is not None:
            raise TraceError(f"{where} column {col!r} holds {bad}, outside the {str(dtype).lower()} range trace "
                             f"format v1 allows ({limits[0]} to {limits[1]}); rewrite the column with values "
                             "that fit")


def _check_values(df: pl.DataFrame, ranges: dict, where: str):
    """Declared ranges (schema.*_RANGE): no negative counts or durations, no NaN or infinite floats."""
    for col, (lo, hi) in ranges.items():
        if col not in df.columns:
            continue
        vals = df[col].drop_nulls()
        if not vals.len():
            continue
        if vals.dtype.is_float() and not vals.is_finite().all():
            raise TraceError(f"{where} column {col!r} holds NaN or infinite values; every value must be a "
                             "finite number (docs/trace-format.md gives each column's unit)")
        if lo is not None and vals.min() < lo:
            raise TraceError(f"{where} column {col!r} holds {vals.min()}, but it may not be below {lo}; "
                             "fix the rows that wrote it (counts, sizes and durations are never negative)")
        if hi is not None and vals.max() > hi:
            raise TraceError(f"{where} column {col!r} holds {vals.max()}, but it may not exceed {hi}; "
                             "fix the rows that wrote it")


def _cast(df: pl.DataFrame, wanted: dict) -> pl.DataFrame:
    return df.with_columns([pl.col(c).cast(t) for c, t in wanted.items() if df.schema[c] != t])


def read_manifest(mpath: Path) -> dict:
    """Parse and check manifest.json against the declared schema (schema.MANIFEST).

    Size and nesting are capped before anything walks the parsed value, and every field a
    reader uses is type-checked here, so a trace that loads is one ``trace info`` and
    ``simulate`` can run on.
    """
    try:
        size = mpath.stat().st_size
    except OSError as exc:
        raise TraceError(f"cannot read {mpath} ({exc.strerror})") from None
    if size > S.MANIFEST_MAX_BYTES:
        raise TraceError(f"{mpath} is {size} bytes, over the {S.MANIFEST_MAX_BYTES} a manifest may hold; "
                         "keep bulky data in the Parquet tables or beside the trace")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TraceError(f"{mpath} is not valid JSON ({exc}); the manifest is corrupt") from None
    except RecursionError:
        raise TraceError(f"{mpath} nests JSON deeper than {S.MANIFEST_MAX_DEPTH} levels; "
                         "the manifest is corrupt or not a sectrace manifest") from None
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise TraceError(f"{mpath} holds a number with too many digits to read; write numbers of ordinary "
                         "size") from None
    if not isinstance(manifest, dict):
        raise TraceError(f"{mpath} must hold a JSON object")
    if _depth(manifest) > S.MANIFEST_MAX_DEPTH:
        raise TraceError(f"{mpath} nests JSON deeper than {S.MANIFEST_MAX_DEPTH} levels; "
                         "the manifest is corrupt or not a sectrace manifest")
    version = manifest.get("schema_version")
    if type(version) is not int or version != S.SCHEMA_VERSION:
        raise TraceError(f"{mpath.parent} has trace schema version {version!r}, but this sectrace reads version "
                         f"{S.SCHEMA_VERSION}; convert the trace or use a matching sectrace release")
    check_manifest(manifest, str(mpath))
    return manifest


def _depth(value) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d <= S.MANIFEST_MAX_DEPTH:
                stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def check_manifest(manifest: dict, where: str = "manifest.json") -> None:
    """Check ``manifest`` against schema.MANIFEST; a TraceError names the first wrong field and the fix."""
    _check_object(manifest, S.MANIFEST, "", where)


def _check_object(obj: dict, fields: dict, prefix: str, where: str):
    for key, spec in fields.items():
        name = prefix + key
        if key not in obj:
            if spec.required:
                raise TraceError(f"{where} lacks the required field {name!r} (see docs/trace-format.md)")
            continue
        _check_field(obj[key], spec, name, where)


def _check_field(value, spec: S.Field, name: str, where: str):
    if value is None and spec.nullable:
        return
    if not _kind_ok(value, spec.kind) or (spec.choices and value not in spec.choices) or not _in_range(value, spec) \
            or (spec.kind == "list" and len(value) < spec.min_items) \
            or (spec.unique and len({json.dumps(v, sort_keys=True) for v in value}) != len(value)):
        raise TraceError(f"{where}: field {name!r} is {_show(value)}, but it must be {_describe(spec)}; "
                         f"{spec.fix or 'correct it in the manifest (docs/trace-format.md lists each field)'}")
    if spec.kind == "list" and spec.items is not None:
        for i, item in enumerate(value):
            _check_field(item, spec.items, f"{name}[{i}]", where)
    if spec.kind == "object" and spec.fields:
        _check_object(value, spec.fields, name + ".", where)


def _kind_ok(value, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "int":
        return type(value) is int
    if kind == "number":
        return type(value) in (int, float) and math.isfinite(value)
    return isinstance(value, {"str": str, "bool": bool, "object": dict, "list": list}[kind])


def _in_range(value, spec: S.Field) -> bool:
    if spec.kind not in ("int", "number"):
        return True
    return (spec.lo is None or value >= spec.lo) and (spec.hi is None or value <= spec.hi)


def _describe(spec: S.Field) -> str:
    if spec.choices:
        text = ("true" if spec.choices == (True,) else
                "one of " + ", ".join(json.dumps(c) for c in spec.choices))
    elif spec.kind in ("int", "number"):
        text = "a whole number" if spec.kind == "int" else "a finite number"
        if spec.lo is not None and spec.hi is not None:
            text += f" from {spec.lo} to {spec.hi}"
        elif spec.lo is not None:
            text += f" of at least {spec.lo}"
    elif spec.kind == "list":
        text = "a list" + (f" of at least {spec.min_items} item{'s' * (spec.min_items != 1)}" if spec.min_items
                           else "") + (" without repeats" if spec.unique else "")
        if spec.items is not None:
            text += f", each {_describe(spec.items)}"
    elif spec.kind == "object":
        need = [k for k, f in (spec.fields or {}).items() if f.required]
        text = "an object" + (f" with {', '.join(need)}" if need else "")
    else:
        text = {"str": "a string", "bool": "true or false", "any": "a value"}[spec.kind]
    return text + (" or null" if spec.nullable else "")


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    manifest = read_manifest(mpath)
    modes = manifest["verifier_modes"]

    utts = _read_parquet(path / "utterances.parquet", "utterances")
    npath = path / "nodes.parquet"
    nodes_schema = _read_parquet_schema(npath, "nodes")
    timings = _read_parquet(path / "timings.parquet", "timings")
    vocab = _read_parquet(path / "vocab.parquet", "vocab") if (path / "vocab.parquet").exists() else None

    _check_columns(utts, S.UTTERANCES, S.UTTERANCES_NULLABLE, "utterances.parquet")
    nschema = S.nodes_schema(modes)
    vnull = {c for m in modes for c in S.verifier_columns(m)}
    _check_types(nodes_schema, nschema, S.NODES_NULLABLE | vnull, "nodes.parquet")
    _check_columns(timings, S.TIMINGS, S.TIMINGS_NULLABLE, "timings.parquet")
    if vocab is not None:
        _check_columns(vocab, S.VOCAB, set(), "vocab.parquet")
        _check_int_widths(vocab, S.VOCAB, "vocab.parquet")
    _check_int_widths(utts, S.UTTERANCES, "utterances.parquet")
    _check_int_widths(timings, S.TIMINGS, "timings.parquet")
    utts = _cast(utts, S.UTTERANCES)
    timings = _cast(timings, S.TIMINGS)
    trace = Trace(manifest, utts, None, timings, vocab, path)
    _check_tables(trace)
    # The nodes table is read a column at a time, each checked as it is read, into the trie's columns: the
    # whole table (half of it the drafter's top-k lists, which replay never reads) is never held at once.
    reader = _NodeColumns(npath, nodes_schema, nschema, S.NODES_NULLABLE | vnull, modes)
    extra = [c for c in nodes_schema if c.startswith("x_")]
    trie = TrieColumns(reader, modes, extra, topk=False)
    for col in nschema:
        if col not in reader.checked and col not in ("d_topk_ids", "d_topk_probs"):
            trie.get(col)
    _check_trie(trie, trie.get, trace)
    trie.release_checks()
    reader.last = None
    trace._trie = trie
    trace._load_nodes = lambda: _cast(_read_parquet(npath, "nodes"), nschema)
    return trace


def _read_parquet_schema(path: Path, what: str) -> dict:
    if not path.exists():
        _read_parquet(path, what)  # the missing-file sentence
    try:
        return dict(pl.read_parquet_schema(path))
    except Exception as exc:  # noqa: BLE001  (as _read_parquet: a torn file raises many kinds)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"{path} is not a readable Parquet file ({first[:160]}); "
                         f"the {what} table is truncated or corrupt: re-collect or restore it") from None


def _check_types(schema: dict, wanted: dict, nullable: set, where: str):
    """_check_columns' presence and type rules, from the file's schema (no data read)."""
    _check_columns(pl.DataFrame(schema=schema), wanted, nullable, where)


class _NodeColumns:
    """nodes.parquet one column at a time: each checked (nulls, integer width, range) and cast on first read."""

    def __init__(self, path: Path, schema: dict, wanted: dict, nullable: set, modes):
        self.path, self.schema, self.wanted, self.nullable = path, schema, wanted, nullable
        floats = {c: (None, None) for c, t in wanted.items() if t == pl.Float32}
        self.ranges = {**S.NODES_RANGE, **floats}
        self.ranks = {f"v_{m}_rank" for m in modes}
        self.checked: set[str] = set()
        self.last = None

    def __call__(self, name: str) -> pl.Series:
        if self.last is not None and self.last.name == name:
            return self.last
        try:
            df = pl.read_parquet(self.path, columns=[name])
        except Exception as exc:  # noqa: BLE001  (as _read_parquet)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TraceError(f"{self.path} is not a readable Parquet file ({first[:160]}); "
                             "the nodes table is truncated or corrupt: re-collect or restore it") from None
        if name not in self.checked:
            self.checked.add(name)
            if name in self.wanted:
                if name not in self.nullable and df[name].null_count():
                    _check_columns(df, {name: self.wanted[name]}, set(), "nodes.parquet")
                _check_int_widths(df, {name: self.wanted[name]}, "nodes.parquet")
                df = _cast(df, {name: self.wanted[name]})
                _check_values(df, {k: v for k, v in self.ranges.items() if k == name}, "nodes.parquet")
                _check_node_ranges(df)
        elif name in self.wanted:
            df = _cast(df, {name: self.wanted[name]})
        self.last = df[name]
        return self.last


def _check_node_ranges(nodes: pl.DataFrame):
    """Ranks start at 1; log-probs are <= 0 and entropies >= 0 (in nats)."""
    for col in nodes.columns:
        if col.startswith("v_") and col.endswith("_rank") and (nodes[col].drop_nulls() < 1).any():
            raise TraceError(f"nodes.parquet column {col} has values below 1; ranks start at 1 (the top-1)")
    for col, lo, hi in (("d_logprob", None, 1e-6), ("d_entropy", -1e-6, None)):
        if col not in nodes.columns:
            continue
        vals = nodes[col].drop_nulls()
        if (lo is not None and (vals < lo).any()) or (hi is not None and (vals > hi).any()):
            raise TraceError(f"nodes.parquet column {col} is out of range (log-probs are <= 0, entropies >= 0, "
                             "in nats); check the units")


def validate(trace: Trace) -> None:
    """Value and referential checks of an in-memory trace: every link in the trie points at a node that exists
    and fits. (``load_trace`` runs the same checks a column at a time as it reads.)"""
    _check_tables(trace)
    nodes = trace.nodes
    _check_values(nodes, {**S.NODES_RANGE, **{c: (None, None) for c, t in S.nodes_schema(trace.modes).items()
                                              if t == pl.Float32}}, "nodes.parquet")
    _check_node_ranges(nodes)
    trie = TrieColumns(nodes, trace.modes, topk=False)
    _check_trie(trie, trie.get, trace)


def _check_tables(trace: Trace) -> None:
    utts, timings = trace.utterances, trace.timings
    if utts.height == 0:
        raise TraceError("utterances.parquet has no rows; a trace needs at least one utterance")
    _check_values(utts, S.UTTERANCES_RANGE, "utterances.parquet")
    _check_values(timings, S.TIMINGS_RANGE, "timings.parquet")
    if utts["utt_id"].n_unique() != utts.height:
        raise TraceError("utterances.parquet repeats an utt_id; each utterance must appear once")
    if timings.height:
        if not timings["side"].is_in(list(S.TIMING_SIDES)).all():
            raise TraceError(f"timings.parquet side must be one of {S.TIMING_SIDES}")
        if not timings["phase"].is_in(list(S.TIMING_PHASES)).all():
            raise TraceError(f"timings.parquet phase must be one of {S.TIMING_PHASES}")
        if not timings["seconds"].is_finite().all():
            raise TraceError("timings.parquet column 'seconds' holds NaN or infinite values; write each call's "
                             "measured wall time in seconds")
        if (timings["seconds"] < 0).any() or (timings["seconds"] > 3600).any():
            raise TraceError("timings.parquet seconds must lie between 0 and 3600; are they in milliseconds? "
                             "Trace format v1 stores seconds")


def _ints(s: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """An integer column's values (0 where null) and its null mask."""
    return s.fill_null(0).to_numpy(), s.is_null().to_numpy()


def _check_trie(trie: TrieColumns, get, trace: Trace) -> None:
    """The trie's links, on the columns' arrays: one root per utterance, parents that exist one level up, and
    each keep/top-1 child reached from its parent by the token that names it."""
    known = set(trace.utterances["utt_id"].to_list())
    have = set(trie.utt_ids)
    if have - known:
        raise TraceError(f"nodes.parquet refers to utterance {min(have - known)!r}, which utterances.parquet "
                         "lacks")
    if known - have:
        raise TraceError(f"utterance {min(known - have)!r} has no nodes; every utterance needs its trie root")
    if trie.repeats_ids:
        raise TraceError("nodes.parquet repeats a (utt_id, node_id) pair; node ids must be unique per utterance")
    code, node_id, depth = trie.code, trie.node_id_a, trie.depth_a
    roots = trie.root_rows
    n_utt = trace.utterances.height
    if len(roots) != n_utt or len(np.unique(code[roots])) != n_utt:
        raise TraceError("each utterance must have exactly one root node (parent_id null)")
    token, token_null = _ints(get("token"))
    if (depth[roots] != 0).any() or not token_null[roots].all():
        raise TraceError("root nodes must have depth 0 and no token")

    def where(i):
        return f"node {node_id[i]} of utterance {trie.utt_ids[code[i]]!r}"

    parent, parent_null = _ints(get("parent_id"))
    child = np.flatnonzero(~parent_null)
    prow = trie.row_of(code[child], parent[child])
    bad = np.flatnonzero(prow < 0)
    if len(bad):
        i = child[bad[0]]
        raise TraceError(f"{where(i)} names parent {parent[i]}, which does not exist: the trie is broken")
    bad = np.flatnonzero(depth[child] != depth[prow] + 1)
    if len(bad):
        i = child[bad[0]]
        raise TraceError(f"{where(i)} has depth {depth[i]}, not its parent's depth + 1")
    del prow, child
    for link, tok in [("keep_child", "d_token")] + [(f"v_{m}_child", f"v_{m}_top1") for m in trace.modes]:
        ids, ids_null = _ints(get(link))
        rows = np.flatnonzero(~ids_null)
        if not len(rows):
            continue
        target = trie.row_of(code[rows], ids[rows])
        tv, tv_null = _ints(get(tok))
        t = np.maximum(target, 0)
        bad = (target < 0) | parent_null[t] | (parent[t] != node_id[rows]) |             (~token_null[t] & ~tv_null[rows] & (token[t] != tv[rows]))
        hit = np.flatnonzero(bad)
        if len(hit):
            i = rows[hit[0]]
            raise TraceError(f"{where(i)}: {link} {ids[i]} is not its child by token "
                             f"{None if tv_null[i] else tv[i]}; the trie is broken")


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
def _frame(rows_or_df, wanted: dict, where: str) -> pl.DataFrame:
    if isinstance(rows_or_df, pl.DataFrame):
        df = rows_or_df
    else:
        df = pl.DataFrame(rows_or_df, schema=wanted, strict=False)
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise TraceError(f"{where} lacks the column {missing[0]!r} that trace format v1 requires "
                         "(see docs/trace-format.md)")
    _check_int_widths(df, wanted, where)
    extra = [c for c in df.columns if c not in wanted]
    try:
        return df.select([pl.col(c).cast(t) for c, t in wanted.items()] + extra)
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"{where} has a column that does not convert to trace format v1's type ({first}); "
                         "see docs/trace-format.md for each column's type") from None


STAGING_INFIX = ".tmp-"


def staging_dirs(path) -> list[Path]:
    """Temporary siblings :func:`stage_trace` made for ``path`` and a kill left behind (safe to delete).

    Matched exactly (``.NAME.tmp-`` + mkdtemp's 8 characters, or the older ``.NAME.`` + 8), so the
    staging folder of another trace whose name starts with NAME (a shard ``NAME.s0``) never matches.
    """
    path = Path(path)
    pat = re.compile(r"\." + re.escape(path.name) + r"\.(tmp-)?[A-Za-z0-9_]{8}")
    try:
        return sorted(p for p in path.parent.iterdir() if pat.fullmatch(p.name) and p.is_dir())
    except OSError:
        return []


def stage_trace(path, manifest: dict, utterances, nodes, timings, vocab=None) -> Path:
    """Write the trace into a temporary sibling of ``path``, fsync it and validate it; returns the sibling.

    :func:`publish_trace` renames it into place. Split in two so a caller (collect) can record
    that the trace is complete between the write and the rename. An error (not a kill) removes
    the sibling; a kill leaves it for :func:`staging_dirs` to find.
    """
    path = Path(path)
    modes = manifest["verifier_modes"]
    utts = _frame(utterances, S.UTTERANCES, "utterances")
    nds = _frame(nodes, S.nodes_schema(modes), "nodes")
    tms = _frame(timings, S.TIMINGS, "timings")
    voc = _frame(vocab, S.VOCAB, "vocab") if vocab is not None else None
    manifest = {"format": S.FORMAT_NAME, **manifest, "schema_version": S.SCHEMA_VERSION}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{STAGING_INFIX}", dir=path.parent))
    try:
        apply_umask(tmp)
        utts.write_parquet(tmp / "utterances.parquet")
        nds.sort(["utt_id", "node_id"]).write_parquet(tmp / "nodes.parquet", compression="zstd")
        tms.write_parquet(tmp / "timings.parquet")
        if voc is not None:
            voc.write_parquet(tmp / "vocab.parquet")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            fsync(f)
        fsync_dir(tmp)
        # Check what we wrote with the same loader every reader uses.
        load_trace(tmp)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def publish_trace(staged: Path, path, overwrite: bool = False) -> Path:
    """Rename a staged trace into place (replacing ``path`` only when ``overwrite``); durable on return."""
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise TraceError(f"{path} already exists; choose another output or pass --force to replace it")
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        staged.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staged.rename(path)
    fsync_dir(path.parent)
    return path


def write_trace(path, manifest: dict, utterances, nodes, timings, vocab=None, overwrite: bool = False) -> Path:
    """Write a trace atomically. Refuses to replace an existing directory unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise TraceError(f"{path} already exists; choose another output or pass --force to replace it")
    tmp = stage_trace(path, manifest, utterances, nodes, timings, vocab)
    try:
        return publish_trace(tmp, path, overwrite=overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
