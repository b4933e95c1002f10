"""Stage 7, scores: item logits -> per track -> per video, calibrated, ensembled.

The formula (documented in README, checked by the end-to-end tests):
1. each item's logit is calibrated with its model's manifest: ``z = (logit - logit(thr)) / T``;
2. a model's track score is the mean of ``sigmoid(z)`` over the track's items (FTCN's own rule:
   a video's score is the mean of its clips' probabilities);
3. the track's ensemble score is ``sigmoid(sum_m w_m * logit(p_m) / sum_m w_m + b)``, a weighted
   mean of the models' calibrated track logits plus a bias (weights from ``DFS_ENSEMBLE_WEIGHTS``
   when set, else from the repository's ``ensemble.json``, else 1; ``b`` from ``ensemble.json``
   and only when the track was scored by the models it was fitted on, else 0: see
   :class:`EnsembleWeights` and ``service/ensemble.py``);
4. the video's score is that of its most suspicious track, so one forged face among real ones is
   not averaged away; a model's video score is likewise its maximum over tracks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from export.manifest import Calibration
from service.pipeline.failures import DfsInputError

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


def ensemble(scores: Mapping[str, float], weights: Mapping[str, float], bias: float = 0.0) -> float:
    """Weighted mean of calibrated logits of the models that scored (weight 1 when unnamed), plus ``bias``."""
    total_weight = sum(weights.get(name, 1.0) for name in scores)
    if total_weight <= 0:
        raise DfsInputError("ensemble weights of the scoring models sum to zero")
    mean_logit = sum(weights.get(name, 1.0) * logit(p) for name, p in scores.items()) / total_weight
    return sigmoid(mean_logit + bias)


@dataclass(frozen=True)
class EnsembleWeights:
    """How the models' calibrated track scores combine: step 3 of the formula above.

    The bias belongs to one combination of models: it was fitted (``export.calibrate``) so that the
    weighted mean of *those* models, calibrated as they were, puts FAKE at 0.5 on the equal-error
    point. A track scored by other models (a request's ``models`` subset, a track too short for a
    clip model) is a different combination, for which each model's own calibration is the best
    operating point known, so it gets no bias. Models with weight 0 do not change the mean and do
    not count in that comparison.
    """

    weights: Mapping[str, float] = field(default_factory=dict)  # missing names weigh 1
    bias: float = 0.0
    bias_models: frozenset[str] = frozenset()  # the positively weighted models the bias was fitted on

    def weight(self, name: str) -> float:
        return self.weights.get(name, 1.0)

    def bias_for(self, names: Iterable[str]) -> float:
        """The bias when the positively weighted models among ``names`` are exactly ``bias_models``, else 0."""
        weighted = frozenset(n for n in names if self.weight(n) > 0)
        return self.bias if self.bias_models and weighted == self.bias_models else 0.0

    def combine(self, scores: Mapping[str, float]) -> float:
        """The track's ensemble P(fake) from the calibrated scores of the models that scored it.

        When every scoring model weighs 0 (e.g. a request for only a model the fit gave no
        weight), the fitted combination says nothing about them, so their plain mean is served.
        """
        if sum(self.weight(name) for name in scores) <= 0:
            return ensemble(scores, {})
        return ensemble(scores, self.weights, self.bias_for(scores))
