"""training.evaluate's calibration against the service's scoring, EER on ties, per-track aggregation, clip gaps."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from export.manifest import Calibration
from models import get_spec
from service.pipeline.crops import clip_windows
from service.pipeline.scores import track_model_score
from training import evaluate as evaluate_module
from training.data import ClipDataset, Sample, TrackRecord, collate
from training.evaluate import Predictions, fit_calibration, report, video_flip_offsets
from training.metrics import auc_interval, binary_metrics, equal_error_rate, per_video


def synthetic_predictions(seed: int, videos: int = 120) -> Predictions:
    """Biased (reals centred at logit 0, fakes at 14), overconfident (fitted T ~ 8) logits; 1-3 tracks per video.

    A fake video has one forged track among real ones (the service's max over tracks must find it).
    """
    rng = np.random.default_rng(seed)
    pred = Predictions([], [], [], [])
    for v in range(videos):
        label = v % 2
        name = f"{'manipulated' if label else 'original'}/method{v % 3}/{v // 3:03d}.mp4"
        n_tracks = int(rng.integers(1, 4))
        forged = int(rng.integers(n_tracks))
        for t in range(n_tracks):
            centre = 1.0 + (2.5 if label and t == forged else -1.0) + rng.normal(0, 1.0)
            for _ in range(int(rng.integers(2, 9))):
                pred.logits.append(4.0 * (centre + rng.normal(0, 0.6)))
                pred.labels.append(label)
                pred.videos.append(name)
                pred.tracks.append(f"{name}/t{t}")
    return pred


def service_decisions(pred: Predictions, calibration: Calibration) -> dict[str, tuple[int, float]]:
    """What the service does, written out independently: calibrated track means, max over tracks."""
    tracks: dict[tuple[str, str], list[float]] = {}
    label_of: dict[str, int] = {}
    for video, track, label, value in zip(pred.videos, pred.tracks, pred.labels, pred.logits, strict=True):
        tracks.setdefault((video, track), []).append(value)
        label_of[video] = label
    video_score: dict[str, float] = {}
    for (video, _), logits in tracks.items():
        score = track_model_score(logits, calibration).score
        video_score[video] = max(video_score.get(video, 0.0), score)
    return {video: (label_of[video], score) for video, score in video_score.items()}


def rates(decisions: dict[str, tuple[int, float]]) -> tuple[float, float]:
    """(FPR, FNR) of the service's 0.5 decision."""
    reals = [s for y, s in decisions.values() if y == 0]
    fakes = [s for y, s in decisions.values() if y == 1]
    return float(np.mean([s >= 0.5 for s in reals])), float(np.mean([s < 0.5 for s in fakes]))


def test_calibration_through_the_service_lands_on_the_reported_equal_error_point() -> None:
    pred = synthetic_predictions(0)
    calibration = fit_calibration(pred)
    assert calibration.temperature > 3  # overconfident logits: T far from 1 is where the old fit went wrong
    decisions = service_decisions(pred, calibration)
    fpr, fnr = rates(decisions)
    # at the videos' equal-error point: FPR and FNR as close as the 60/60 videos allow
    labels, flips = video_flip_offsets(pred, calibration.temperature)
    assert abs(fpr - fnr) <= 1 / 60 + 1e-9
    assert (fpr + fnr) / 2 == pytest.approx(equal_error_rate(labels, flips), abs=1 / 60)
    # the report's operating point is the service's, video by video
    result = report(pred, calibration, "test", "test")
    reported = result["videos_at_calibrated_threshold"]
    accuracy = np.mean([(s >= 0.5) == y for y, s in decisions.values()])
    assert reported["accuracy"] == pytest.approx(accuracy)
    for video, (label, score) in decisions.items():
        entry = result["per_video"][video]
        assert entry["label"] == label and entry["service_score"] == pytest.approx(score, abs=1e-4)
    assert result["operating_point_in_sample"] is True


def test_old_probability_space_threshold_misses_the_operating_point() -> None:
    """Guard on the test itself: on this data the EER threshold of mean sigmoid(logit/T) is far off."""
    pred = synthetic_predictions(0)
    temperature = fit_calibration(pred).temperature
    probs = [1 / (1 + math.exp(-v / temperature)) for v in pred.logits]
    labels, means = per_video(pred.videos, pred.labels, probs, pred.tracks)
    k = int(
        np.argmin(
            [
                abs(
                    np.mean([m < t for m, y in zip(means, labels, strict=True) if y == 1])
                    - np.mean([m >= t for m, y in zip(means, labels, strict=True) if y == 0])
                )
                for t in means
            ]
        )
    )
    old = Calibration(temperature=temperature, threshold=float(np.clip(means[k], 1e-4, 1 - 1e-4)))
    fpr, fnr = rates(service_decisions(pred, old))
    assert abs(fpr - fnr) > 0.2


def test_calibration_holds_out_of_sample_and_threshold_stays_in_range() -> None:
    fit, held_out = synthetic_predictions(1, 400), synthetic_predictions(2, 400)
    calibration = fit_calibration(fit)
    assert 1e-4 <= calibration.threshold <= 1 - 1e-4
    fpr, fnr = rates(service_decisions(held_out, calibration))
    assert abs(fpr - fnr) < 0.12
    result = report(held_out, calibration, "test", "val")
    assert result["calibrated_on"] == "val" and result["operating_point_in_sample"] is False


def test_eer_on_a_flat_roc_segment_and_on_ties() -> None:
    # flat: after the first fake, four reals in a row; FPR = FNR = 1/2 midway along that segment
    assert equal_error_rate([1, 0, 0, 0, 0, 1], [0.9, 0.8, 0.6, 0.4, 0.1, 0.2]) == pytest.approx(0.5)
    # crossing inside a segment: FNR stays 1/3 while FPR goes 1/4 -> 1/2
    assert equal_error_rate([1, 1, 1, 0, 0, 0, 0], [0.9, 0.7, 0.3, 0.8, 0.6, 0.5, 0.2]) == pytest.approx(1 / 3)
    # ties across classes: (FPR, FNR) goes (0, 2/3) -> (2/3, 1/3) in one step; they meet at 4/9
    labels, scores = [1, 1, 0, 0, 1, 0], [0.9, 0.5, 0.5, 0.5, 0.2, 0.1]
    assert equal_error_rate(labels, scores) == pytest.approx(4 / 9)
    assert binary_metrics(labels, scores)["eer"] == pytest.approx(4 / 9)


def test_auc_interval_holds_the_auc_and_narrows_with_more_videos() -> None:
    rng = np.random.default_rng(3)

    def draw(n: int) -> tuple[list[int], list[float]]:
        labels = [1] * n + [0] * n
        return labels, list(rng.normal(size=2 * n) + np.array(labels) * 1.0)

    few, many = draw(8), draw(200)
    for labels, scores in (few, many):
        low, high = auc_interval(labels, scores)
        assert 0 <= low < binary_metrics(labels, scores)["auc"] < high <= 1
    assert np.diff(auc_interval(*many)) < np.diff(auc_interval(*few)) / 2
    assert auc_interval(*few) == auc_interval(*few)  # seeded: a report is reproducible
    # a perfect ranking stays perfect in every resample; one class has no AUC; a class of one is fixed
    assert auc_interval([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == (1.0, 1.0)
    assert all(np.isnan(auc_interval([1, 1], [0.3, 0.4])))
    low, high = auc_interval([1, 0, 0, 0], [0.5, 0.4, 0.6, 0.1])
    assert (low, high) == (0.0, 1.0) and binary_metrics([1, 0, 0, 0], [0.5, 0.4, 0.6, 0.1])["auc"] == pytest.approx(
        2 / 3
    )


def test_per_video_takes_the_max_of_track_means() -> None:
    videos = ["a", "a", "a", "a", "b", "b"]
    tracks = ["a/t0", "a/t0", "a/t1", "a/t1", "b/t0", "b/t0"]
    scores = [0.1, 0.3, 0.8, 0.6, 0.2, 0.4]
    labels = [1, 1, 1, 1, 0, 0]
    assert per_video(videos, labels, scores, tracks) == ([1, 0], [pytest.approx(0.7), pytest.approx(0.3)])
    assert per_video(videos, labels, scores) == ([1, 0], [pytest.approx(0.45), pytest.approx(0.3)])


def test_collate_carries_tracks_and_samples_default_to_no_track() -> None:
    image, mask = torch.zeros(3, 2, 2), torch.zeros(2, 2)
    batch = collate([Sample(image, 1, mask, "v", track="v/t0"), Sample(image, 0, mask, "w")])
    assert batch["track"] == ["v/t0", ""]


def gapped_record(tmp_path: Path, frame_indices: list[int], name: str = "t0") -> TrackRecord:
    return TrackRecord(tmp_path / name, 0, "test", "id", "video.mp4", data={"frame_indices": frame_indices})


def test_clip_windows_stay_inside_consecutive_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = get_spec("ftcn")  # 32-frame clips
    runs = [list(range(40)), list(range(50, 60)), list(range(70, 110))]  # 40, 10 (too short), 40 frames
    gapped = gapped_record(tmp_path, [i for run in runs for i in run])
    whole = gapped_record(tmp_path, list(range(100)), "t1")
    with caplog.at_level(logging.WARNING, logger="training.data"):
        dataset = ClipDataset([gapped, whole], spec, stride=8, max_clips_per_track=8)
    assert sum("gaps" in r.getMessage() for r in caplog.records) == 1  # one warning, for the gapped track
    windows = {r: [w for i, w in dataset.items if i == r] for r in (0, 1)}
    frames = np.asarray(gapped.frame_indices)
    starts = [int(frames[w[0]]) for w in windows[0]]
    assert starts == [0, 8, 70, 78]
    for window in windows[0]:
        assert len(window) == 32 and np.all(np.diff(frames[window]) == 1)
    # a track without gaps keeps exactly the service's windows
    expected = clip_windows(100, 32, 8, 8)
    assert [w.tolist() for w in windows[1]] == [w.tolist() for w in expected]


def test_clip_windows_of_a_gapped_track_are_thinned_to_max_clips(tmp_path: Path) -> None:
    record = gapped_record(tmp_path, list(range(64)) + list(range(100, 164)))
    dataset = ClipDataset([record], get_spec("ftcn"), stride=4, max_clips_per_track=3)
    frames = np.asarray(record.frame_indices)
    # 18 starts (0..32 and 100..132 by 4), evenly thinned as clip_windows does: the 0th, 8th and 17th
    assert [int(frames[w[0]]) for _, w in dataset.items] == [0, 32, 132]
    assert all(np.all(np.diff(frames[w]) == 1) for _, w in dataset.items)


def test_evaluate_calibrates_on_val_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with (data / "index.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["track", "source", "label", "split", "identity", "frames"])
        writer.writerow(["tracks/a/t0", "a.mp4", "0", "val", "a", "4"])
        writer.writerow(["tracks/b/t0", "b.mp4", "1", "test", "b", "4"])
    # FF++ style names: the same file name (000.mp4) under several method folders, each its own video
    by_split = {"val": synthetic_predictions(3), "test": synthetic_predictions(4)}
    monkeypatch.setattr(evaluate_module, "predict", lambda checkpoint, data, split, batch_size: by_split[split])
    checkpoint = tmp_path / "model.pt"
    torch.save({"model": "stub", "state_dict": {}}, checkpoint)
    common = ["--checkpoint", str(checkpoint), "--data", str(data), "--split", "test", "--roc", str(tmp_path / "r.png")]
    assert evaluate_module.main([*common, "--write"]) == 0
    stored = torch.load(checkpoint, weights_only=False)
    expected = fit_calibration(by_split["val"])
    assert stored["calibration"] == {"temperature": expected.temperature, "threshold": expected.threshold}
    result = stored["metrics"]["evaluate_test"]
    assert result["calibrated_on"] == "val" and result["operating_point_in_sample"] is False
    assert len(result["per_video"]) == len(set(by_split["test"].videos))
    assert by_split["test"].videos[0] in result["per_video"]
    in_sample = evaluate_module.evaluate(checkpoint, data, "test", 4, None, calibrate_on="test")
    assert in_sample["calibrated_on"] == "test" and in_sample["operating_point_in_sample"] is True
