"""Learned gates: a per-token model of "the verifier would reject this drafted token", trained on a trace.

Training uses scikit-learn (logistic regression, gradient boosting); the saved gate is
plain JSON (coefficients, or the boosted trees' split tables, plus a Platt calibration
fitted on out-of-fold scores), so loading one never executes code and needs no
scikit-learn. A block escalates when P(some token rejected) = 1 − Π(1 − p_i) exceeds
the gate's threshold. Cross-validation is grouped by utterance: no utterance is in both
the training and the test fold.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..protocol import Block
from ..version import __version__
from .features import BASE_FEATURES, available_features, block_matrix, emotion_ids, node_table

FORMAT = "sectrace-learned-gate"
MODELS = ("logreg", "gbt")
LABELS = ("reject", "impact")


# --- checking a gate file before use ------------------------------------------------------------------
#: Largest gate file read, checked from its size before a byte is read (`gates train` writes ~100 kB).
MAX_GATE_BYTES = 16 * 1024 * 1024
#: How deep JSON arrays and objects may nest in a gate file (a gate needs 5: doc, model, trees, tree, list).
MAX_JSON_DEPTH = 8
MAX_FEATURES = 256
MAX_TREES = 10_000
#: Nodes in one tree, and levels below its root (`gates train` grows depth-3 trees of at most 15 nodes).
MAX_TREE_NODES = 65_535
MAX_TREE_DEPTH = 32
#: Trees × the largest tree: the size of the padded scoring tables (5 arrays of 8-byte numbers each).
MAX_PADDED_NODES = 2_000_000
MAX_EMOTION_IDS = 1_000_000
_FEATURE_NAME = re.compile(r"x_[A-Za-z0-9_]{1,64}")
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


class _Malformed(Exception):
    """What is wrong inside a gate document; turned into one UserError naming the file."""


def _number(v, what: str) -> float:
    if type(v) not in (int, float):
        raise _Malformed(f"{what} must be a number")
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise _Malformed(f"{what} must be a finite number")
    return f


def _numbers(v, what: str, n: int | None = None) -> np.ndarray:
    if not isinstance(v, list):
        raise _Malformed(f"{what} must be a list of numbers")
    if n is not None and len(v) != n:
        raise _Malformed(f"{what} has {len(v)} entries where {n} are needed")
    if not all(type(x) is float or type(x) is int for x in v):
        raise _Malformed(f"{what} must hold only numbers")
    try:
        a = np.asarray(v, dtype=float)
    except OverflowError:
        raise _Malformed(f"{what} holds a number too large for a float") from None
    if not np.isfinite(a).all():
        raise _Malformed(f"{what} holds a non-finite number")
    return a


_TREE_FIELDS = ("left", "right", "feature", "threshold", "value")


def _first(values: list, ok) -> int:
    return next(j for j, x in enumerate(values) if not ok(x))


def _is_int(x) -> bool:
    return type(x) is int


def _is_number(x) -> bool:
    return type(x) is float or type(x) is int


def _walk(left: np.ndarray, right: np.ndarray, sizes: np.ndarray) -> int:
    """Levels below the roots of trees stored back to back (child indices local to each tree), walking
    all trees level by level from their node 0: every node must be reached exactly once.

    The walk stops after MAX_TREE_DEPTH levels whatever the arrays hold, so a cycle cannot make it
    loop; a node reached twice (a cycle back up, or a child shared by two parents) is an error.
    """
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    tree_of = np.repeat(np.arange(len(sizes)), sizes)
    seen = np.zeros(len(left), dtype=bool)
    seen[starts] = True
    frontier, depth = starts, 0
    while True:
        inner = frontier[left[frontier] != -1]
        if not inner.size:
            break
        depth += 1
        if depth > MAX_TREE_DEPTH:
            raise _Malformed(f"tree {int(tree_of[inner[0]])} is deeper than {MAX_TREE_DEPTH} levels")
        base = starts[tree_of[inner]]
        kids = np.concatenate([base + left[inner], base + right[inner]])
        uniq, counts = np.unique(kids, return_counts=True)
        again = uniq[(counts > 1) | seen[uniq]]
        if again.size:
            k = int(again[0])
            raise _Malformed(f"tree {int(tree_of[k])} reaches node {k - int(starts[tree_of[k]])} twice "
                             "(a cycle or a shared child)")
        seen[kids] = True
        frontier = kids
    if not seen.all():
        k = int(np.flatnonzero(~seen)[0])
        raise _Malformed(f"tree {int(tree_of[k])} has node {k - int(starts[tree_of[k]])}, which its root never reaches")
    return depth


def _check_trees(trees: list, n_features: int | None) -> dict:
    """All trees' fields as flat arrays (trees back to back), after checking lengths, types, ranges, structure."""
    sizes = np.empty(len(trees), dtype=np.int64)
    for i, t in enumerate(trees):
        if not isinstance(t, dict):
            raise _Malformed(f"tree {i} must be an object")
        for key in _TREE_FIELDS:
            if not isinstance(t.get(key), list):
                raise _Malformed(f"tree {i} {key} must be a list")
        n = len(t["left"])
        if not 1 <= n <= MAX_TREE_NODES:
            raise _Malformed(f"tree {i} must have 1 to {MAX_TREE_NODES} nodes")
        for key in _TREE_FIELDS[1:]:
            if len(t[key]) != n:
                raise _Malformed(f"tree {i} {key} has {len(t[key])} entries where {n} are needed")
        sizes[i] = n
    if len(trees) * int(sizes.max()) > MAX_PADDED_NODES:
        raise _Malformed(f"its {len(trees)} trees of up to {int(sizes.max())} nodes would need more than "
                         f"{MAX_PADDED_NODES:,} padded nodes to score")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    tree_of = np.repeat(np.arange(len(trees)), sizes)

    def node(k) -> str:
        return f"tree {int(tree_of[k])} node {int(k - starts[tree_of[k]])}"

    out = {"sizes": sizes}
    for key in _TREE_FIELDS:
        flat = [x for t in trees for x in t[key]]
        whole = key in ("left", "right", "feature")
        ok = _is_int if whole else _is_number
        if not all(map(ok, flat)):
            k = _first(flat, ok)
            raise _Malformed(f"{node(k)} {key} must be {'a whole number' if whole else 'a number'}")
        try:
            out[key] = np.asarray(flat, dtype=np.int64 if whole else float)
        except OverflowError:
            k = _first(flat, (lambda x: -2 ** 63 <= x < 2 ** 63) if whole else (lambda x: abs(x) < 1e308))
            raise _Malformed(f"{node(k)} {key} is too large") from None
        if not whole and not np.isfinite(out[key]).all():
            raise _Malformed(f"{node(int(np.flatnonzero(~np.isfinite(out[key]))[0]))} {key} is not finite")
    n_of = sizes[tree_of]
    for key in ("left", "right"):
        bad = np.flatnonzero((out[key] < -1) | (out[key] >= n_of))
        if bad.size:
            k = int(bad[0])
            raise _Malformed(f"{node(k)} {key} child {int(out[key][k])} is outside -1..{int(n_of[k]) - 1}")
    leaf = out["left"] == -1
    odd = np.flatnonzero(leaf != (out["right"] == -1))
    if odd.size:
        raise _Malformed(f"{node(int(odd[0]))} has one child; a node has two children or none")
    feat = out["feature"]
    hi = n_features if n_features is not None else np.iinfo(np.int64).max
    bad = np.flatnonzero(~leaf & ((feat < 0) | (feat >= hi)))
    if bad.size:
        k = int(bad[0])
        raise _Malformed(f"{node(k)} splits on feature {int(feat[k])}, outside 0..{hi - 1}" if feat[k] >= 0
                         else f"{node(k)} splits on no feature")
    out["depth"] = _walk(out["left"], out["right"], sizes)
    out["tree_of"], out["local"] = tree_of, np.arange(len(tree_of)) - starts[tree_of]
    return out


def _check_model(model, n_features: int | None) -> dict:
    """The model's numbers as arrays, after checking every field (raises _Malformed)."""
    if not isinstance(model, dict):
        raise _Malformed("model must be an object")
    kind = model.get("kind")
    if kind not in MODELS:
        raise _Malformed(f"model kind {str(kind)[:40]!r} is not one of {', '.join(MODELS)}")
    if kind == "logreg":
        coef = model.get("coef")
        n = n_features if n_features is not None else (len(coef) if isinstance(coef, list) else 0)
        if not 1 <= n <= MAX_FEATURES:
            raise _Malformed(f"model coef must list 1 to {MAX_FEATURES} numbers")
        out = {"kind": kind, "mean": _numbers(model.get("mean"), "model mean", n),
               "scale": _numbers(model.get("scale"), "model scale", n),
               "coef": _numbers(coef, "model coef", n), "intercept": _number(model.get("intercept"), "model intercept")}
        if (out["scale"] <= 0).any():
            raise _Malformed("model scale must hold only positive numbers")
        return out
    trees = model.get("trees")
    if not isinstance(trees, list) or not 1 <= len(trees) <= MAX_TREES:
        raise _Malformed(f"model trees must be a list of 1 to {MAX_TREES} trees")
    return {"kind": kind, "init": _number(model.get("init"), "model init"),
            "learning_rate": _number(model.get("learning_rate"), "model learning_rate"),
            **_check_trees(trees, n_features)}


def _check_gate(doc) -> None:
    """Every field a learned gate is used through, with its type (raises _Malformed)."""
    feats = doc.get("features")
    if not isinstance(feats, list) or not 1 <= len(feats) <= MAX_FEATURES or not all(type(f) is str for f in feats):
        raise _Malformed(f"features must be a list of 1 to {MAX_FEATURES} feature names")
    for f in feats:
        if f not in BASE_FEATURES and f != "emotion_word" and not _FEATURE_NAME.fullmatch(f):
            raise _Malformed(f"feature {f[:40]!r} is not a known feature (logprob, entropy, margin, p2, depth, "
                             "emotion_word or an x_* signal)")
    if len(set(feats)) != len(feats):
        raise _Malformed("features lists a feature twice")
    label = doc.get("label")
    if not isinstance(label, dict) or label.get("name") not in LABELS or type(label.get("mode")) is not str \
            or type(label.get("rank")) is not int:
        raise _Malformed(f"label must be an object with name ({' or '.join(LABELS)}), mode and rank")
    trained = doc.get("trained_on")
    if not isinstance(trained, dict) or not isinstance(trained.get("trace"), (str, type(None))):
        raise _Malformed("trained_on must be an object whose trace is a path or null")
    cv = doc.get("cv")
    if not isinstance(cv, dict):
        raise _Malformed("cv must be an object")
    for key in ("roc_auc", "pr_auc"):
        _number(cv.get(key), f"cv {key}")
    cal = doc.get("calibration")
    if not isinstance(cal, dict):
        raise _Malformed("calibration must be an object with numbers a and b")
    _number(cal.get("a"), "calibration a")
    _number(cal.get("b"), "calibration b")
    emo = doc.get("emotion_ids", [])
    if not isinstance(emo, list) or len(emo) > MAX_EMOTION_IDS or not all(type(i) is int and i >= 0 for i in emo):
        raise _Malformed(f"emotion_ids must be a list of at most {MAX_EMOTION_IDS:,} token ids")
    _check_model(doc.get("model"), len(feats))


def _malformed(source, exc: _Malformed) -> UserError:
    return UserError(f"learned gate {source} is malformed: {exc}; use a gate written by `sectrace gates train`")


# --- scoring without scikit-learn ---------------------------------------------------------------------
class Compiled:
    """A saved model as numpy arrays, for fast repeated scoring (trees padded and walked level by level).

    The model is checked first (kinds, lengths, finite numbers, every tree a tree), so scoring never
    indexes out of range, and the walk takes a fixed number of steps (the deepest tree's depth).
    """

    def __init__(self, model: dict, n_features: int | None = None, source: str = "model"):
        try:
            m = _check_model(model, n_features)
        except _Malformed as exc:
            raise _malformed(source, exc) from None
        self.kind = m["kind"]
        if self.kind == "logreg":
            self.w = m["coef"] / m["scale"]
            self.c = m["intercept"] - float(m["mean"] @ self.w)
            return
        T, width = len(m["sizes"]), int(m["sizes"].max())
        at = (m["tree_of"], m["local"])
        self.left = np.full((T, width), -1, dtype=np.int64)
        self.right = np.full((T, width), -1, dtype=np.int64)
        self.feat = np.zeros((T, width), dtype=np.int64)
        self.thr = np.zeros((T, width))
        self.val = np.zeros((T, width))
        self.left[at], self.right[at] = m["left"], m["right"]
        self.feat[at] = np.maximum(m["feature"], 0)
        self.thr[at], self.val[at] = m["threshold"], m["value"]
        self.depth = m["depth"]
        self.n_features = int(self.feat.max()) + 1
        self.init, self.lr = m["init"], m["learning_rate"]
        self.rows = np.arange(T)[:, None]

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if self.kind == "logreg":
            return X @ self.w + self.c
        if X.shape[1] < self.n_features:
            raise ValueError(f"the model splits on feature {self.n_features - 1}; X has {X.shape[1]} columns")
        nodes = np.zeros((self.left.shape[0], X.shape[0]), dtype=np.int64)
        r = self.rows
        for _ in range(self.depth):
            f = self.feat[r, nodes]
            go_left = X.T[f, np.arange(X.shape[0])[None, :]] <= self.thr[r, nodes]
            nxt = np.where(go_left, self.left[r, nodes], self.right[r, nodes])
            nodes = np.where(nxt == -1, nodes, nxt)
        return self.init + self.lr * self.val[r, nodes].sum(axis=0)


def raw_score(model: dict, X: np.ndarray) -> np.ndarray:
    """The model's uncalibrated log-odds for rows of X."""
    return Compiled(model)(np.asarray(X, dtype=float))


def calibrated(gate: dict, X: np.ndarray, compiled: Compiled | None = None) -> np.ndarray:
    a, b = gate["calibration"]["a"], gate["calibration"]["b"]
    raw = (compiled or Compiled(gate["model"], len(gate["features"])))(np.asarray(X, dtype=float))
    return 1.0 / (1.0 + np.exp(-(a * raw + b)))


# --- training ------------------------------------------------------------------------------------------
def _fit(kind: str, X, y, seed: int):
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(n_estimators=120, max_depth=3, learning_rate=0.1, subsample=0.8,
                                      random_state=seed).fit(X, y)


def export_model(kind: str, est) -> dict:
    """A fitted estimator as plain numbers (checked against scikit-learn's own decision_function in tests)."""
    if kind == "logreg":
        sc, lr = est[0], est[-1]
        return {"kind": "logreg", "mean": sc.mean_.tolist(), "scale": sc.scale_.tolist(),
                "coef": lr.coef_[0].tolist(), "intercept": float(lr.intercept_[0])}
    prior = float(est.init_.class_prior_[1])
    trees = []
    for (tree,) in est.estimators_:
        t = tree.tree_
        trees.append({"left": t.children_left.tolist(), "right": t.children_right.tolist(),
                      "feature": t.feature.tolist(), "threshold": t.threshold.tolist(),
                      "value": t.value[:, 0, 0].tolist()})
    return {"kind": "gbt", "init": math.log(prior / (1 - prior)), "learning_rate": float(est.learning_rate),
            "trees": trees}


def _metrics(y, p) -> dict:
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    if len(set(y.tolist())) < 2:
        return {"roc_auc": float("nan"), "pr_auc": float("nan"), "brier": float("nan"), "base_rate": float(y.mean())}
    return {"roc_auc": float(roc_auc_score(y, p)), "pr_auc": float(average_precision_score(y, p)),
            "brier": float(brier_score_loss(y, p)), "base_rate": float(y.mean())}


def train_gate(trace, kind: str = "gbt", label: str = "reject", mode: str = "audio", rank: int = 1,
               features=None, folds: int = 5, seed: int = 0, progress=None) -> dict:
    """Train, cross-validate (grouped by utterance) and calibrate one gate; returns its JSON document."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GroupKFold
    except ImportError:  # pragma: no cover
        raise UserError("training gates needs scikit-learn: pip install 'sectrace[gates]'") from None
    if kind not in MODELS:
        raise UserError(f"unknown model {kind!r}; use {' or '.join(MODELS)}")
    if label not in LABELS:
        raise UserError(f"unknown label {label!r}; use {' or '.join(LABELS)}")
    feats = list(features) if features else available_features(trace)
    tab = node_table(trace, feats, mode, rank)
    X = tab.select(feats).to_numpy().astype(float)
    y = tab[label].to_numpy().astype(int)
    groups = tab["utt_id"].to_numpy()
    n_groups = len(set(groups.tolist()))
    if y.sum() < 5 or (1 - y).sum() < 5:
        raise UserError(f"too few {label} examples ({int(y.sum())} of {len(y)}) to train a gate on this trace")
    if n_groups < 2:
        raise UserError("cross-validation needs at least 2 utterances in the trace")
    k = min(folds, n_groups)
    oof = np.zeros(len(y))
    for tr_idx, te_idx in GroupKFold(n_splits=k).split(X, y, groups):
        est = _fit(kind, X[tr_idx], y[tr_idx], seed)
        oof[te_idx] = raw_score(export_model(kind, est), X[te_idx])
        if progress:
            progress(1)
    platt = LogisticRegression(C=1e6, max_iter=1000).fit(oof.reshape(-1, 1), y)
    a, b = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    p_oof = 1.0 / (1.0 + np.exp(-(a * oof + b)))
    final = _fit(kind, X, y, seed)
    if progress:
        progress(1)
    doc = {
        "format": FORMAT, "version": 1, "tool_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "features": feats, "label": {"name": label, "mode": mode, "rank": rank},
        "trained_on": {"trace": str(trace.path) if trace.path else None, "name": trace.name,
                       "synthetic": trace.synthetic, "utterances": n_groups, "tokens": int(len(y)),
                       "tokenizer": trace.manifest.get("drafter", {}).get("tokenizer_fingerprint")},
        "cv": {"folds": k, "grouped_by": "utt_id", "seed": seed, **_metrics(y, p_oof)},
        "model": export_model(kind, final),
        "calibration": {"method": "platt on out-of-fold scores", "a": a, "b": b},
        "emotion_ids": sorted(emotion_ids(trace)) if "emotion_word" in feats else [],
    }
    return doc


def save_gate(doc: dict, path: Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


# --- the gate -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LearnedGate:
    """Escalate when the calibrated P(at least one token of the block is rejected) exceeds ``threshold``."""

    path: str
    threshold: float
    doc: dict = field(repr=False, compare=False, hash=False)

    @property
    def features(self) -> list[str]:
        return self.doc["features"]

    def __post_init__(self):
        object.__setattr__(self, "_compiled", Compiled(self.doc["model"], len(self.doc["features"]), self.path))
        object.__setattr__(self, "_emotion", frozenset(self.doc.get("emotion_ids", ())))
        cal = self.doc["calibration"]
        object.__setattr__(self, "_ab", (float(cal["a"]), float(cal["b"])))

    def block_prob(self, block: Block) -> float:
        X = block_matrix(block, self.doc["features"], self._emotion)
        a, b = self._ab
        p = 1.0 / (1.0 + np.exp(-(a * self._compiled(X) + b)))
        return float(1.0 - np.prod(1.0 - p))

    def escalate(self, block: Block) -> bool:
        return self.block_prob(block) > self.threshold


def _reject_constant(name: str):
    raise _Malformed(f"it holds {name}, which is not a finite number")


def _read_capped(p: Path) -> bytes:
    """The file's bytes: a regular file of at most MAX_GATE_BYTES, its size checked before reading.

    Opened non-blocking and checked on the open descriptor, so a FIFO or device swapped in for the
    file cannot make the read wait or run on.
    """
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"no learned gate at {p}; train one with `sectrace gates train --trace TRACE --out {p.name}`") \
            from None
    except OSError as exc:
        raise UserError(f"cannot read the learned gate {p}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"the learned gate {p} is not a regular file; give the JSON file `sectrace gates train` wrote")
    if st.st_size > MAX_GATE_BYTES:
        raise UserError(f"the learned gate {p} is {st.st_size:,} bytes, over the {MAX_GATE_BYTES:,}-byte limit for "
                        "gate files (`sectrace gates train` writes about 100 kB)")
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise UserError(f"cannot read the learned gate {p}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_GATE_BYTES:
            raise UserError(f"the learned gate {p} changed while being opened; give a regular file of at most "
                            f"{MAX_GATE_BYTES:,} bytes")
        data = fh.read(MAX_GATE_BYTES + 1)
    if len(data) > MAX_GATE_BYTES:
        raise UserError(f"the learned gate {p} grew past the {MAX_GATE_BYTES:,}-byte limit for gate files while "
                        "being read")
    return data


def _json_depth(data: bytes) -> int:
    """How deep arrays and objects nest, counted on the bytes with strings blanked (no parsing, no recursion)."""
    bare = np.frombuffer(_JSON_STRING.sub(b'""', data), dtype=np.uint8)
    marks = bare[np.isin(bare, np.frombuffer(b"[]{}", dtype=np.uint8))]
    if not marks.size:
        return 0
    step = np.where((marks == ord("[")) | (marks == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(step).max())


def read_gate(path) -> dict:
    """A gate document read as data and checked against the gate schema before anything uses it.

    Checked: size (before reading), nesting, JSON with finite numbers only, format and version,
    every field the gate is used through with its type and length, and every tree's structure.
    Any failure is one UserError naming the file.
    """
    p = Path(path)
    data = _read_capped(p)
    not_gate = f"{p} is not a sectrace learned gate (JSON written by `sectrace gates train`)"
    if _json_depth(data) > MAX_JSON_DEPTH:
        raise UserError(f"learned gate {p} nests JSON deeper than {MAX_JSON_DEPTH} levels; a gate file needs 5")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except _Malformed as exc:
        raise _malformed(p, exc) from None
    except (ValueError, UnicodeDecodeError, RecursionError):  # JSONDecodeError is a ValueError; so are huge ints
        raise UserError(not_gate) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(not_gate)
    if doc.get("version") != 1:
        raise UserError(f"{p} is learned-gate version {str(doc.get('version'))[:20]}; this sectrace reads version 1")
    try:
        _check_gate(doc)
    except _Malformed as exc:
        raise _malformed(p, exc) from None
    return doc


def _check_threshold(threshold: float) -> float:
    if not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):  # also refuses NaN
        raise UserError(f"learned gate threshold {threshold} must be a probability, e.g. learned:gate.json:0.5")
    return float(threshold)


def gate_from_doc(path, doc: dict, threshold: float = 0.5, trace=None) -> LearnedGate:
    """A gate from a document :func:`read_gate` returned; with ``trace``, check it has the gate's features."""
    threshold = _check_threshold(threshold)
    if trace is not None:
        have = set(available_features(trace))
        missing = [f for f in doc["features"] if f not in have]
        if missing:
            raise UserError(f"the learned gate {path} uses features {', '.join(missing)} that the trace lacks; "
                            "use a trace that records them, or train a gate on this trace")
    return LearnedGate(str(path), threshold, doc)


def load_learned(path, threshold: float = 0.5, trace=None) -> LearnedGate:
    """Load a saved gate safely (checked JSON numbers only); with ``trace``, check it has the gate's features."""
    _check_threshold(threshold)
    return gate_from_doc(path, read_gate(path), threshold, trace)


class GateFiles:
    """The learned-gate files a user named explicitly (e.g. ``sectrace report --gate-file``).

    Gate specs read back from a results file name files (``learned:FILE:P``); a report must not open
    a file because a results row names it. Specs resolve against these files only: the same path
    as written, the same absolute path, or else the one given file with the same name. Each given
    file is read and checked once, here.
    """

    def __init__(self, paths=()):
        self.paths = [Path(p) for p in paths]
        self.docs = {str(p): read_gate(p) for p in self.paths}

    @staticmethod
    def _norm(path) -> str:
        return os.path.normcase(os.path.normpath(os.path.abspath(os.fspath(path))))

    def resolve(self, named: str) -> Path | None:
        """The given file a spec's path stands for, or None; touches no file (paths compared as text)."""
        for p in self.paths:
            if str(p) == named:
                return p
        want = self._norm(named)
        for p in self.paths:
            if self._norm(p) == want:
                return p
        same_name = [p for p in self.paths if p.name == Path(named).name]
        return same_name[0] if len(same_name) == 1 else None

    def load(self, named: str, threshold: float = 0.5, trace=None) -> LearnedGate | None:
        p = self.resolve(named)
        if p is None:
            return None
        return gate_from_doc(p, self.docs[str(p)], threshold, trace)
