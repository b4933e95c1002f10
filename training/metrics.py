"""Detection metrics shared by validation and ``training.evaluate`` (scikit-learn underneath)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def binary_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> dict[str, float]:
    """AUC, AP, EER and accuracy at ``threshold``; AUC/AP/EER are NaN when only one class is present."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    out = {"n": float(len(y)), "accuracy": float(((s >= threshold).astype(int) == y).mean()) if len(y) else float("nan")}
    if len(set(y.tolist())) < 2:
        return {**out, "auc": float("nan"), "ap": float("nan"), "eer": float("nan")}
    fpr, tpr, _ = roc_curve(y, s)
    fnr = 1 - tpr
    k = int(np.nanargmin(np.abs(fnr - fpr)))
    return {
        **out,
        "auc": float(roc_auc_score(y, s)),
        "ap": float(average_precision_score(y, s)),
        "eer": float((fpr[k] + fnr[k]) / 2),
    }


def per_video(videos: Sequence[str], labels: Sequence[int], scores: Sequence[float]) -> tuple[list[int], list[float]]:
    """Mean score per video (the service's per-track mean; one track per video in most datasets)."""
    grouped: dict[str, list[float]] = defaultdict(list)
    label_of: dict[str, int] = {}
    for video, label, score in zip(videos, labels, scores, strict=True):
        grouped[video].append(score)
        label_of[video] = label
    names = sorted(grouped)
    return [label_of[n] for n in names], [float(np.mean(grouped[n])) for n in names]
