"""Fit the ensemble's weights and bias on held-out videos, as the service will combine them.

Input: :class:`~export.served.VideoScores`, each model's calibrated score per face track of
labelled videos, through the serving pipeline and with the calibrations being written. Output:
the ``weights`` and ``bias`` of ``P = sigmoid(sum_m w_m * logit(p_m) / sum_m w_m + bias)``
(``service/pipeline/scores.py``). Only tracks scored by every model are used: the bias is served
for that combination only (:class:`~service.pipeline.scores.EnsembleWeights`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from export.served import VideoScores
from service.pipeline.scores import EnsembleWeights, logit
from training.evaluate import fit_offset
from training.metrics import binary_metrics

log = logging.getLogger("export.fit_ensemble")

REGULARISATION_C = 0.1  # scikit-learn's C: inverse L2 strength, per the docstring of fit_weights


@dataclass
class FittedEnsemble:
    weights: dict[str, float]  # >= 0, sum 1
    bias: float
    coefficients: dict[str, float]  # the logistic regression's, before clipping and normalising
    fallback: str | None  # why equal weights were kept, if they were
    videos: int
    tracks: int
    regularisation_c: float

    @property
    def combination(self) -> EnsembleWeights:
        return EnsembleWeights(self.weights, self.bias, frozenset(n for n, w in self.weights.items() if w > 0))

    def describe(self) -> dict[str, Any]:
        return {
            "method": "L2 logistic regression (scikit-learn, class_weight=balanced) on per-video calibrated logits; "
            "negative coefficients clipped to 0, normalised to sum 1; bias at the videos' equal-error point",
            "regularisation_c": self.regularisation_c,
            "coefficients": self.coefficients,
            "fallback": self.fallback,
            "videos": self.videos,
            "tracks": self.tracks,
        }


def complete_tracks(scores: VideoScores, models: list[str]) -> VideoScores:
    """The tracks scored by every one of ``models`` (videos left with none are dropped)."""
    tracks = {
        video: {t: {m: s[m] for m in models} for t, s in per.items() if all(m in s for m in models)}
        for video, per in scores.tracks.items()
    }
    tracks = {video: per for video, per in tracks.items() if per}
    return VideoScores({v: scores.labels[v] for v in tracks}, tracks)


def fit_weights(
    features: np.ndarray, labels: np.ndarray, names: list[str], c: float = REGULARISATION_C
) -> tuple[dict[str, float], dict[str, float], str | None]:
    """Non-negative weights summing to 1 from an L2 logistic regression of the labels on ``features``.

    ``features[v, m]`` is model m's calibrated logit of video v (the logit of its served video
    score), unstandardised: every model is already on the same calibrated scale, so the
    coefficients are weights of the served formula as they stand.

    Why strong regularisation (C = 0.1 by default, i.e. the penalty outweighs the data's log-loss
    on the ~17 videos of a val split): with that few videos one model often separates them by
    chance, and an unpenalised fit then drives its coefficient to infinity and every other
    model's to zero. A strong L2 penalty keeps the coefficients small, where each is close to the
    model's own (class-balanced) mean logit difference between fakes and reals: a per-model signal,
    not a joint one resting on correlations that 17 points cannot estimate. ``class_weight=
    "balanced"`` because the bias is set at the equal-error point, which weighs both classes
    equally, and val splits are not balanced. Negative coefficients are clipped to 0: "trust the
    opposite of this detector" on a few videos is far likelier noise than signal. All clipped
    (nothing agrees with the labels): equal weights, with the reason returned.
    """
    equal = {name: 1.0 / len(names) for name in names}
    if len(set(labels.tolist())) < 2:
        return equal, {}, "only one class among the videos"
    regression = LogisticRegression(C=c, class_weight="balanced", max_iter=1000)
    regression.fit(features, labels)
    coefficients = {name: float(v) for name, v in zip(names, regression.coef_[0], strict=True)}
    clipped = {name: max(v, 0.0) for name, v in coefficients.items()}
    total = sum(clipped.values())
    if total <= 0:
        return equal, coefficients, "no model's coefficient is positive"
    return {name: v / total for name, v in clipped.items()}, coefficients, None


def fit_bias(scores: VideoScores, weights: dict[str, float]) -> float:
    """The bias putting FAKE at 0.5 on the videos' equal-error point, scored as served.

    A video is FAKE when its most suspicious track is: ``max_t sigmoid(m_t + b) >= 0.5``, with
    ``m_t`` the track's weighted mean logit, i.e. when ``max_t m_t >= -b``. So ``max_t m_t`` is the
    video's flip offset and ``training.evaluate.fit_offset`` (the rule the models' thresholds
    follow) picks ``-b`` between two videos at the equal-error point.
    """
    total = sum(weights.values())
    flips = [
        max(sum(w * logit(models[n]) for n, w in weights.items()) / total for models in tracks.values())
        for _, tracks in sorted(scores.tracks.items())
    ]
    labels = [scores.labels[v] for v in sorted(scores.tracks)]
    if len(set(labels)) < 2:
        return 0.0
    return -fit_offset(labels, flips)


def _video_auc(scores: VideoScores, weights: dict[str, float]) -> float:
    """Video AUC of ``weights`` as served (a common bias cannot change the ranking, so none is added)."""
    from sklearn.metrics import roc_auc_score

    served = scores.ensemble(EnsembleWeights(weights))
    return float(roc_auc_score([scores.labels[v] for v in served], list(served.values())))


def _no_worse_than_equal(
    scores: VideoScores, weights: dict[str, float], models: list[str]
) -> tuple[dict[str, float], str | None]:
    """The fitted weights, unless equal weights rank the same videos at least as well.

    The regression minimises log-loss, not ranking error; on a handful of videos it can trade a
    better-ranked video for a more confident one and lose AUC to the plain mean (seen on the
    corpus's 17 val videos: 0.79 fitted vs 0.86 equal). Equal weights are the prior the fit should
    beat, so they are kept where it does not.
    """
    equal = {m: 1.0 / len(models) for m in models}
    fitted_auc, equal_auc = _video_auc(scores, weights), _video_auc(scores, equal)
    if equal_auc >= fitted_auc:
        return equal, (
            f"equal weights rank the fit's videos at least as well "
            f"(video AUC {equal_auc:.3f} vs {fitted_auc:.3f} fitted)"
        )
    return weights, None


def fit(scores: VideoScores, models: list[str], c: float = REGULARISATION_C) -> FittedEnsemble:
    """Weights (:func:`fit_weights`) and then the bias (:func:`fit_bias`) on the complete tracks.

    A single model gets weight 1 and no bias: its calibration already puts its 0.5 at the videos'
    equal-error point, and a bias on top would only move its scores, not its decisions.
    """
    complete = complete_tracks(scores, models)
    if len(models) == 1:
        tracks = sum(len(t) for t in complete.tracks.values())
        return FittedEnsemble(
            {models[0]: 1.0},
            0.0,
            {},
            "one model: its calibration is the operating point",
            len(complete.tracks),
            tracks,
            c,
        )
    videos = sorted(complete.tracks)
    left = len(scores.tracks) - len(videos)
    if left:
        log.warning(
            "%d video(s) have no track scored by all of %s; the ensemble is fitted without them",
            left,
            ", ".join(models),
        )
    features = np.array([[logit(complete.model(m)[v]) for m in models] for v in videos]).reshape(
        len(videos), len(models)
    )
    labels = np.array([complete.labels[v] for v in videos], dtype=int)
    weights, coefficients, fallback = (
        fit_weights(features, labels, models, c)
        if len(videos)
        else ({m: 1.0 / len(models) for m in models}, {}, "no video")
    )
    if not fallback and len(set(labels.tolist())) == 2:
        weights, fallback = _no_worse_than_equal(complete, weights, models)
    if fallback:
        log.warning("ensemble: equal weights (%s)", fallback)
    bias = fit_bias(complete, weights) if len(videos) else 0.0
    tracks = sum(len(t) for t in complete.tracks.values())
    return FittedEnsemble(weights, bias, coefficients, fallback, len(videos), tracks, c)


def metrics(
    scores: VideoScores, fitted: FittedEnsemble, name: Callable[[str], str] = str, threshold: float = 0.5
) -> dict[str, Any]:
    """Video metrics (all scored videos) of the fitted ensemble and of equal weights without bias;
    ``per_video`` (fitted) keyed by ``name(video)``."""
    out: dict[str, Any] = {}
    for key, combination in (("fitted", fitted.combination), ("equal_weights", EnsembleWeights())):
        served = scores.ensemble(combination)
        out[key] = binary_metrics([scores.labels[v] for v in served], list(served.values()), threshold)
        if key == "fitted":
            out["per_video"] = {name(v): {"label": scores.labels[v], "score": round(p, 4)} for v, p in served.items()}
    return out
