"""Threshold-free and threshold metrics of a detector score (higher score = more suspicious).

ROC and AUROC come from scikit-learn (a required dependency); this module fixes the convention
on top of it: clean inputs are the negatives, attacked inputs the positives, and an input is
flagged when its score is at or above the threshold.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn import metrics as sk_metrics

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


def _labelled(neg: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) in scikit-learn's form: negatives 0, positives 1."""
    return np.r_[np.zeros(neg.size), np.ones(pos.size)], np.concatenate([neg, pos])


def auroc(scores_neg: ArrayLike, scores_pos: ArrayLike) -> float:
    """Area under the ROC curve = P(s_pos > s_neg) + 0.5 P(s_pos = s_neg) (Mann-Whitney U).

    Args:
        scores_neg: scores of negatives (clean inputs), any shape.
        scores_pos: scores of positives (adversarial inputs); higher = more suspicious.
    """
    labels, scores = _labelled(*_split(scores_neg, scores_pos))
    return float(sk_metrics.roc_auc_score(labels, scores))


def roc_curve(
    scores_neg: ArrayLike, scores_pos: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): flag ``score >= threshold``; thresholds descend, first is +inf.

    One point per distinct score (``drop_intermediate=False``), so :func:`youden_threshold` and
    :func:`tpr_at_fpr` see every achievable operating point.
    """
    labels, scores = _labelled(*_split(scores_neg, scores_pos))
    fpr, tpr, thr = sk_metrics.roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr, thr  # thr[0] is +inf (scikit-learn >= 1.3): the point that flags nothing


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
