"""Stage 7, scores: item logits -> per track -> per video, calibrated, ensembled.

The formula (documented in README, checked by the end-to-end tests):
1. each item's logit is calibrated with its model's manifest: ``z = (logit - logit(thr)) / T``;
2. a model's track score is the mean of ``sigmoid(z)`` over the track's items (FTCN's own rule:
   a video's score is the mean of its clips' probabilities);
3. the track's ensemble score is ``sigmoid(sum_m w_m * logit(p_m) / sum_m w_m)``, a weighted mean
   of the models' calibrated track logits (weights from ``DFS_ENSEMBLE_WEIGHTS``, default 1);
4. the video's score is that of its most suspicious track, so one forged face among real ones is
   not averaged away; a model's video score is likewise its maximum over tracks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from export.manifest import Calibration

_EPS = 1e-7


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


@dataclass(frozen=True)
class ModelTrackScore:
    score: float  # calibrated P(fake) of this track by this model
    items: int  # clips or frames scored
    item_scores: list[float]


def track_model_score(raw_logits: Sequence[float], calibration: Calibration) -> ModelTrackScore:
    probs = [sigmoid(calibration.apply(v)) for v in raw_logits]
    return ModelTrackScore(score=float(np.mean(probs)), items=len(probs), item_scores=probs)


def ensemble(scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Weighted mean of calibrated logits of the models that scored (weight 1 when unnamed)."""
    total_weight = sum(weights.get(name, 1.0) for name in scores)
    if total_weight <= 0:
        raise ValueError("ensemble weights of the scoring models sum to zero")
    mean_logit = sum(weights.get(name, 1.0) * logit(p) for name, p in scores.items()) / total_weight
    return sigmoid(mean_logit)
