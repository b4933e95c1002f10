"""export.cross_validate: leave-one-identity-out scores of the calibration and the ensemble."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from export.cross_validate import out_of_fold
from training.evaluate import Predictions


def predictions(per_video: dict[str, tuple[int, list[float]]]) -> Predictions:
    pred = Predictions([], [], [], [])
    for video, (label, logits) in per_video.items():
        for value in logits:
            pred.logits.append(value)
            pred.labels.append(label)
            pred.videos.append(video)
            pred.tracks.append("0")
    return pred


def test_every_identity_is_scored_by_a_fit_that_never_saw_it() -> None:
    rng = np.random.default_rng(0)
    videos = {f"id{i}_{kind}.mp4": (int(kind == "fake"), i) for i in range(6) for kind in ("fake", "real")}
    # "clear" separates fakes from reals; "noise" does not
    clear = predictions(
        {v: (label, list(2.0 * (2 * label - 1) + rng.normal(0, 0.3, 4))) for v, (label, _) in videos.items()}
    )
    noise = predictions({v: (label, list(rng.normal(0, 1, 4))) for v, (label, _) in videos.items()})
    run = SimpleNamespace(predictions={"clear": clear, "noise": noise})
    crossed = out_of_fold(run, {v: f"id{i}" for v, (_, i) in videos.items()})
    assert crossed.folds == 6 and set(crossed.labels) == set(videos)
    aucs = crossed.aucs()
    assert aucs["clear"] == 1.0 and aucs["noise"] < 0.9
    intervals = crossed.intervals()
    assert intervals["clear"] == (1.0, 1.0)  # a perfect ranking stays perfect in every resample
    assert intervals["noise"][0] <= aucs["noise"] <= intervals["noise"][1] and intervals["noise"][0] < 0.5
    assert set(crossed.scores["ensemble"]) == set(videos)


def test_a_fold_whose_rest_holds_one_class_is_left_out() -> None:
    # identity "only_fakes" holds every fake: without it the rest is all real, nothing can be fitted
    per_video = {
        "a.mp4": (1, [2.0, 1.5]),
        "b.mp4": (1, [1.0, 2.5]),
        "c.mp4": (0, [-1.0, -2.0]),
        "d.mp4": (0, [0.5, -1.0]),
    }
    run = SimpleNamespace(predictions={"m": predictions(per_video)})
    crossed = out_of_fold(run, {"a.mp4": "only_fakes", "b.mp4": "only_fakes", "c.mp4": "r1", "d.mp4": "r2"})
    assert crossed.folds == 2 and set(crossed.labels) == {"c.mp4", "d.mp4"}
    assert crossed.aucs() == {} and crossed.intervals() == {}  # one class scored: no AUC to report
