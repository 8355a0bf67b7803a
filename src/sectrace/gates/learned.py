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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import UserError
from ..protocol import Block
from .features import available_features, block_matrix, emotion_ids, node_table

FORMAT = "sectrace-learned-gate"
MODELS = ("logreg", "gbt")
LABELS = ("reject", "impact")


# --- scoring without scikit-learn ---------------------------------------------------------------------
class Compiled:
    """A saved model as numpy arrays, for fast repeated scoring (trees padded and walked level by level)."""

    def __init__(self, model: dict):
        self.kind = model["kind"]
        if self.kind == "logreg":
            scale = np.asarray(model["scale"], dtype=float)
            self.w = np.asarray(model["coef"], dtype=float) / scale
            self.c = float(model["intercept"]) - float(np.asarray(model["mean"], dtype=float) @ self.w)
            return
        trees = model["trees"]
        m = max(len(t["left"]) for t in trees)
        T = len(trees)
        self.left = np.full((T, m), -1, dtype=np.int64)
        self.right = np.full((T, m), -1, dtype=np.int64)
        self.feat = np.zeros((T, m), dtype=np.int64)
        self.thr = np.zeros((T, m))
        self.val = np.zeros((T, m))
        for i, t in enumerate(trees):
            n = len(t["left"])
            self.left[i, :n], self.right[i, :n] = t["left"], t["right"]
            self.feat[i, :n] = np.maximum(t["feature"], 0)
            self.thr[i, :n], self.val[i, :n] = t["threshold"], t["value"]
        depth = 0
        for t in trees:  # longest root-to-leaf path
            stack = [(0, 0)]
            while stack:
                node, d = stack.pop()
                if t["left"][node] == -1:
                    depth = max(depth, d)
                else:
                    stack += [(t["left"][node], d + 1), (t["right"][node], d + 1)]
        self.depth = depth
        self.init, self.lr = float(model["init"]), float(model["learning_rate"])
        self.rows = np.arange(T)[:, None]

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if self.kind == "logreg":
            return X @ self.w + self.c
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
    raw = (compiled or Compiled(gate["model"]))(np.asarray(X, dtype=float))
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
        object.__setattr__(self, "_compiled", Compiled(self.doc["model"]))
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


def read_gate(path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no learned gate at {p}; train one with `sectrace gates train TRACE --out {p.name}`")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{p} is not a sectrace learned gate (JSON written by `sectrace gates train`)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"{p} is not a sectrace learned gate (JSON written by `sectrace gates train`)")
    if doc.get("version") != 1:
        raise UserError(f"{p} is learned-gate version {doc.get('version')}; this sectrace reads version 1")
    return doc


def load_learned(path, threshold: float = 0.5, trace=None) -> LearnedGate:
    """Load a saved gate safely (JSON numbers only); with ``trace``, check it has the gate's features."""
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"learned gate threshold {threshold} must be a probability, e.g. learned:gate.json:0.5")
    doc = read_gate(path)
    if trace is not None:
        have = set(available_features(trace))
        missing = [f for f in doc["features"] if f not in have]
        if missing:
            raise UserError(f"the learned gate {path} uses features {', '.join(missing)} that the trace lacks; "
                            "use a trace that records them, or train a gate on this trace")
    return LearnedGate(str(path), float(threshold), doc)
