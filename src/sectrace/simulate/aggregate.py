"""Per-utterance × configuration seconds kept factored, so that summaries are priced aggregate first.

The closed form makes every timed column linear in the cost vector: latency = features @ theta, and so are
TTFT, the baselines and every breakdown part. A summary needs only sums of such a column over utterances
(its mean, or one per bootstrap resample), and a sum commutes with the product: Σ_u w_u (F @ θ)_u =
(w @ F) @ θ. With W the (resamples × utterances) weights of the bootstrap that is (W @ F) @ θ, which costs
resamples × (utterances + configurations) × features instead of resamples × utterances × configurations and
never holds the utterances × configurations array. Only percentiles need every utterance's value: they ask
:meth:`Linear.values` for one block of configurations at a time.

Everything that reads timed columns accepts either a plain (utterances × configurations) array or a
:class:`Linear`, through :func:`sums`, :func:`values`, :func:`rows` and :func:`nan_rows`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np


@dataclass(frozen=True)
class Linear:
    """``features @ theta − minus``: seconds per utterance (rows) and configuration (columns), unmultiplied.

    ``minus`` is a plain (utterances × configurations) array taken away, for what is not linear in theta
    (the time an overlapping edge hides is a minimum per escalation)."""

    features: np.ndarray  # (utterances, f)
    theta: np.ndarray  # (f, configurations)
    minus: np.ndarray | None = None  # (utterances, configurations)

    @property
    def shape(self) -> tuple[int, int]:
        return self.features.shape[0], self.theta.shape[1]

    def values(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The (utterances × configurations ``lo:hi``) array itself."""
        v = self.features @ self.theta[:, lo:hi]
        return v if self.minus is None else v - self.minus[:, lo:hi]

    def by_config(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The values transposed, (configurations ``lo:hi`` × utterances) and C-ordered: each configuration's
        utterances contiguous, as a sort along them wants."""
        th = self.theta[:, lo:hi]
        v = th.T @ self.features.T
        return v if self.minus is None else v - self.minus[:, lo:hi].T

    def sums(self, w: np.ndarray, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """(R, configurations ``lo:hi``): the weighted sums over utterances, w of shape (R, utterances)."""
        s = (w @ self.features) @ self.theta[:, lo:hi]
        if self.minus is not None:
            s = s - w @ self.minus[:, lo:hi]
        return s

    def rows(self, mask: np.ndarray) -> Linear:
        return Linear(self.features[mask], self.theta, None if self.minus is None else self.minus[mask])

    def nan_rows(self) -> np.ndarray:
        """Utterances whose values are NaN: a coverage miss leaves its features NaN (theta is finite)."""
        bad = np.isnan(self.features).any(axis=1)
        return bad if self.minus is None else bad | np.isnan(self.minus).any(axis=1)

    @classmethod
    def combine(cls, *terms: tuple[float, np.ndarray, np.ndarray]) -> Linear:
        """Σ sign · F @ θ over ``(sign, F, θ)`` terms, as one product (features side by side, thetas stacked)."""
        return cls(np.hstack([s * f for s, f, _ in terms]), np.vstack([t for _, _, t in terms]))


def sums(col, w: np.ndarray, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Weighted sums over utterances of a timed column (array or :class:`Linear`), configurations ``lo:hi``."""
    if isinstance(col, Linear):
        return col.sums(w, lo, hi)
    return w @ np.asarray(col, float)[:, lo:hi]


def values(col, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """A timed column's values for configurations ``lo:hi``."""
    return col.values(lo, hi) if isinstance(col, Linear) else np.asarray(col, float)[:, lo:hi]


def by_config(col, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """A timed column's values as (configurations ``lo:hi`` × utterances), C-ordered."""
    if isinstance(col, Linear):
        return col.by_config(lo, hi)
    return np.array(np.asarray(col, float)[:, lo:hi].T, order="C")  # a copy: the caller sorts it


def rows(col, mask: np.ndarray):
    return col.rows(mask) if isinstance(col, Linear) else np.asarray(col)[mask]


def nan_rows(col) -> np.ndarray:
    return col.nan_rows() if isinstance(col, Linear) else np.isnan(np.asarray(col, float)).any(axis=1)


@cache
def _controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread():
    """A context in which BLAS runs on one thread.

    Pricing products are thin (utterances or resamples × ~33 features × a block of configurations): on the
    2-core development machine two BLAS threads spent more CPU time on them than one (0.27 vs 0.25 CPU-s for
    the 80-policy × 30,000-configuration stack, benchmarks/bench_closed_form_ratio.py), and sweeps already
    run one process per core (``--jobs``, dask workers), where BLAS threads would only oversubscribe. The
    controller is built once (discovering the loaded BLAS libraries costs ~0.2 ms; a limit then ~10-50 µs, so
    callers take it once per policy and block, not once per product)."""
    return _controller().limit(limits=1, user_api="blas")
