"""Out-of-fold scores of the calibration and the ensemble: how they rank identities they were not fitted on.

``export.calibrate`` fits each model's temperature and threshold and the ensemble's weights and bias
on the same val videos it then reports, so its AUCs are in-sample; with 17 videos a fit can find
what only those videos share (the per-model temperatures alone set how much each model counts in
the equal-weight ensemble). Here every identity is held out in turn: the calibrations and the
ensemble are fitted on the other identities' videos exactly as ``export.calibrate`` fits them, and
the held-out identity's videos are scored with them. The AUC over those out-of-fold scores is the
figure a new identity can expect from this fitting procedure (not from one fitted file).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from export import fit_ensemble
from export.served import ServedRun, served_scores
from training.evaluate import Predictions, fit_calibration
from training.metrics import auc_interval, binary_metrics

ENSEMBLE = "ensemble"


def restricted(pred: Predictions, videos: set[str]) -> Predictions:
    """The items of ``pred`` whose video is in ``videos``."""
    keep = [i for i, v in enumerate(pred.videos) if v in videos]
    return Predictions(
        [pred.logits[i] for i in keep], [pred.labels[i] for i in keep], [pred.videos[i] for i in keep],
        [pred.tracks[i] for i in keep],
    )  # fmt: skip


@dataclass(frozen=True)
class OutOfFold:
    scores: dict[str, dict[str, float]]  # model (and "ensemble") -> video -> P(fake), each fitted without its identity
    labels: dict[str, int]
    folds: int

    def scored(self) -> dict[str, tuple[list[int], list[float]]]:
        """Per model (and "ensemble") that scored both classes: its videos' labels and scores, sorted by video."""
        out = {}
        for name, by_video in self.scores.items():
            videos = sorted(by_video)
            labels = [self.labels[v] for v in videos]
            if len(set(labels)) == 2:
                out[name] = (labels, [by_video[v] for v in videos])
        return out

    def aucs(self) -> dict[str, float]:
        return {name: binary_metrics(labels, scores)["auc"] for name, (labels, scores) in self.scored().items()}

    def intervals(self) -> dict[str, tuple[float, float]]:
        """The 95% bootstrap interval of each AUC of ``aucs`` (``training.metrics.auc_interval``)."""
        return {name: auc_interval(labels, scores) for name, (labels, scores) in self.scored().items()}


def out_of_fold(run: ServedRun, identity_of: Mapping[str, str]) -> OutOfFold:
    """Leave-one-identity-out scores of ``run``'s videos (``identity_of``: video path -> identity).

    A fold whose training videos hold one class only cannot fit a threshold or a bias; its videos are
    left out of the out-of-fold scores, and so is a model with no item on a fold's training videos.
    """
    videos = sorted({v for pred in run.predictions.values() for v in pred.videos})
    identities = sorted({identity_of.get(v, v) for v in videos})
    scores: dict[str, dict[str, float]] = {}
    labels: dict[str, int] = {}
    folds = 0
    for identity in identities:
        held = {v for v in videos if identity_of.get(v, v) == identity}
        rest = set(videos) - held
        train = {name: restricted(pred, rest) for name, pred in run.predictions.items()}
        if len({label for pred in train.values() for label in pred.labels}) < 2:
            continue
        calibrations = {name: fit_calibration(pred) for name, pred in train.items() if pred.logits}
        if not calibrations:
            continue
        fitted = fit_ensemble.fit(served_scores(train, calibrations), sorted(calibrations))
        test = served_scores({n: restricted(p, held) for n, p in run.predictions.items()}, calibrations)
        folds += 1
        labels.update(test.labels)
        for name in calibrations:
            scores.setdefault(name, {}).update(test.model(name))
        scores.setdefault(ENSEMBLE, {}).update(test.ensemble(fitted.combination))
    return OutOfFold(scores, labels, folds)
