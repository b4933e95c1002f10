"""Detection metrics shared by validation and ``training.evaluate`` (scikit-learn underneath)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from scipy.stats import bootstrap, mannwhitneyu
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def equal_error_rate(labels: Sequence[int], scores: Sequence[float]) -> float:
    """EER: where the ROC's false-negative and false-positive rates cross, interpolated on the segment.

    ``drop_intermediate=False`` keeps every threshold: the default drops collinear points, and on a
    flat ROC segment those are exactly the ones where FPR = FNR may lie. Along the curve
    ``FNR - FPR`` never increases, from 1 (nothing flagged) to -1 (everything flagged), so there is
    one crossing; between its two ROC points both rates move linearly and meet at the EER.
    """
    fpr, tpr, _ = roc_curve(np.asarray(labels, dtype=int), np.asarray(scores, dtype=float), drop_intermediate=False)
    fnr = 1 - tpr
    gap = fnr - fpr
    k = int(np.argmax(gap <= 0))  # first point at or past the crossing (gap[0] = 1 > 0, gap[-1] = -1)
    if gap[k] == 0:
        return float(fpr[k])
    t = gap[k - 1] / (gap[k - 1] - gap[k])
    return float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1]))


def binary_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> dict[str, float]:
    """AUC, AP, EER, and accuracy, FPR and FNR at ``threshold`` (an operating point is judged by its
    errors on each class, not by accuracy alone); AUC/AP/EER are NaN when only one class is present."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    flagged = s >= threshold
    accuracy = float((flagged.astype(int) == y).mean()) if len(y) else float("nan")
    fpr = float(flagged[y == 0].mean()) if (y == 0).any() else float("nan")
    fnr = float((~flagged[y == 1]).mean()) if (y == 1).any() else float("nan")
    out = {"n": float(len(y)), "accuracy": accuracy, "fpr": fpr, "fnr": fnr}
    if len(set(y.tolist())) < 2:
        return {**out, "auc": float("nan"), "ap": float("nan"), "eer": float("nan")}
    return {
        **out,
        "auc": float(roc_auc_score(y, s)),
        "ap": float(average_precision_score(y, s)),
        "eer": equal_error_rate(y, s),
    }


def auc_interval(
    labels: Sequence[int], scores: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A bootstrap confidence interval of the ROC AUC (NaN, NaN when only one class is present).

    Why: on the few videos a quality report has (17 val, 12 held out here), one misranked fake-real
    pair moves the AUC by several hundredths, and a reader needs to see that beside the number.
    The fakes and the reals are resampled separately (``scipy.stats.bootstrap`` with two independent
    samples), so every resample holds both classes and the AUC is always defined; the AUC of a
    resample is the Mann-Whitney U over (fakes x reals), ties counting half, as ``roc_auc_score``.
    Percentile intervals, seeded, so a report is reproducible.
    """
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    fakes, reals = s[y == 1], s[y == 0]
    if not len(fakes) or not len(reals):
        return float("nan"), float("nan")
    # scipy resamples only samples of two or more; a class of one is the same in every resample, and
    # twice that one score leaves every AUC unchanged (a share of pairs), so it is passed twice.
    fakes, reals = (np.repeat(c, 2) if len(c) == 1 else c for c in (fakes, reals))

    def auc_of(fake: np.ndarray, real: np.ndarray, axis: int = -1) -> np.ndarray:
        return mannwhitneyu(fake, real, axis=axis).statistic / (fake.shape[axis] * real.shape[axis])

    result = bootstrap(
        (fakes, reals),
        auc_of,
        vectorized=True,
        paired=False,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def per_video(
    videos: Sequence[str], labels: Sequence[int], scores: Sequence[float], tracks: Sequence[str] | None = None
) -> tuple[list[int], list[float]]:
    """Labels and scores per video, videos in sorted order, aggregated as the service does.

    With ``tracks`` (the face track of each item): the mean over each track's items, then the
    maximum over the video's tracks, so one forged face among real ones is not averaged away.
    Without, all items of a video count as one track (the mean per video).
    """
    if tracks is None:
        tracks = [""] * len(videos)
    grouped: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    label_of: dict[str, int] = {}
    for video, track, label, score in zip(videos, tracks, labels, scores, strict=True):
        grouped[video][track].append(score)
        label_of[video] = label
    names = sorted(grouped)
    return [label_of[n] for n in names], [max(float(np.mean(s)) for s in grouped[n].values()) for n in names]
