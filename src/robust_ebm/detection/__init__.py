"""Energy-based detection of adversarial inputs (Beadini & Masi, arXiv 2304.04033).

>>> from robust_ebm.detection import EnergyDetector, calibrate_detector
>>> det, _ = calibrate_detector(model, x_cal, y_cal, make_attack("pgd", eps=0.1))  # doctest: +SKIP
>>> det.save("detector.json"); EnergyDetector.load("detector.json").predict(logits)  # doctest: +SKIP
"""

from .detector import DIRECTIONS, TEMPERATURES, EnergyDetector, model_logits
from .metrics import auroc, rates_at, roc_curve, tpr_at_fpr, youden_threshold
from .study import (
    HE_GAMMAS,
    DetectorAwareLoss,
    adaptive_attacks,
    calibrate_detector,
    calibration_positives,
    calibration_roc_curves,
    detection_row,
    evaluate_detector,
    he_attacks,
    he_gamma_study,
    search_he_gamma,
)

__all__ = [
    "DIRECTIONS",
    "HE_GAMMAS",
    "TEMPERATURES",
    "DetectorAwareLoss",
    "EnergyDetector",
    "adaptive_attacks",
    "auroc",
    "calibrate_detector",
    "calibration_positives",
    "calibration_roc_curves",
    "detection_row",
    "evaluate_detector",
    "he_attacks",
    "he_gamma_study",
    "model_logits",
    "rates_at",
    "roc_curve",
    "search_he_gamma",
    "tpr_at_fpr",
    "youden_threshold",
]
