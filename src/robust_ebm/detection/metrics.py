"""Threshold-free and threshold metrics of a detector score (higher score = more suspicious).

Written here (not taken from scikit-learn) so the library's numbers do not depend on an optional
package; ``tests/test_detection.py`` checks :func:`auroc` against ``sklearn.metrics.roc_auc_score``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ..errors import UserError

__all__ = ["auroc", "rates_at", "roc_curve", "tpr_at_fpr", "youden_threshold"]


def _split(scores_neg: ArrayLike, scores_pos: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    neg = np.asarray(scores_neg, dtype=np.float64).ravel()
    pos = np.asarray(scores_pos, dtype=np.float64).ravel()
    if neg.size == 0 or pos.size == 0:
        raise UserError(
            f"ROC needs both classes: got {neg.size} negatives and {pos.size} positives"
        )
    if not (np.isfinite(neg).all() and np.isfinite(pos).all()):
        raise UserError("detector scores contain NaN or infinite values")
    return neg, pos


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_v = values[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], sorted_v.size]
    mean_rank = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auroc(scores_neg: ArrayLike, scores_pos: ArrayLike) -> float:
    """Area under the ROC curve = P(s_pos > s_neg) + 0.5 P(s_pos = s_neg) (Mann-Whitney U).

    Args:
        scores_neg: scores of negatives (clean inputs), any shape.
        scores_pos: scores of positives (adversarial inputs); higher = more suspicious.
    """
    neg, pos = _split(scores_neg, scores_pos)
    ranks = _average_ranks(np.concatenate([neg, pos]))
    n_pos, n_neg = pos.size, neg.size
    u = ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(
    scores_neg: ArrayLike, scores_pos: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): flag ``score >= threshold``; thresholds descend, first is +inf."""
    neg, pos = _split(scores_neg, scores_pos)
    s = np.concatenate([neg, pos])
    label = np.r_[np.zeros(neg.size), np.ones(pos.size)]
    order = np.argsort(-s, kind="mergesort")
    s, label = s[order], label[order]
    last_of_run = np.r_[s[1:] != s[:-1], True]  # a threshold at each distinct value
    tp = np.cumsum(label)[last_of_run]
    fp = np.cumsum(1 - label)[last_of_run]
    thr = s[last_of_run]
    tpr = np.r_[0.0, tp / pos.size]
    fpr = np.r_[0.0, fp / neg.size]
    return fpr, tpr, np.r_[np.inf, thr]


def youden_threshold(scores_neg: ArrayLike, scores_pos: ArrayLike) -> tuple[float, float, float]:
    """The threshold maximising Youden's J = TPR - FPR: (threshold, tpr, fpr).

    Ties in J go to the lower FPR (the first, highest threshold).
    """
    fpr, tpr, thr = roc_curve(scores_neg, scores_pos)
    j = tpr - fpr
    i = int(np.argmax(j[1:])) + 1  # skip the +inf point (flags nothing)
    return float(thr[i]), float(tpr[i]), float(fpr[i])


def tpr_at_fpr(scores_neg: ArrayLike, scores_pos: ArrayLike, max_fpr: float = 0.05) -> float:
    """The highest TPR over thresholds whose FPR is at most ``max_fpr``."""
    fpr, tpr, _ = roc_curve(scores_neg, scores_pos)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def rates_at(flags_neg: ArrayLike, flags_pos: ArrayLike) -> tuple[float, float]:
    """(TPR, FPR) of boolean decisions on positives and negatives (nan for an empty side)."""
    neg = np.asarray(flags_neg, dtype=bool).ravel()
    pos = np.asarray(flags_pos, dtype=bool).ravel()
    tpr = float(pos.mean()) if pos.size else float("nan")
    fpr = float(neg.mean()) if neg.size else float("nan")
    return tpr, fpr
