"""BlazeFace on LiteRT (service/pipeline/blazeface.py) against mediapipe's own graph, on real video frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert", reason="DFS_BLAZEFACE_RUNTIME=litert needs ai-edge-litert (the cpu extra)")

from service.config import Settings  # noqa: E402
from service.pipeline import blazeface
from service.pipeline.decode import iter_frames
from service.pipeline.faces import BlazeFaceDetector, LiteRtBlazeFaceDetector, create_detector
from service.pipeline.failures import DfsInputError

# Close-ups, a small face in a street scene and a studio shot, at the detection size the service uses
SHARED_VIDEOS = ["wild_fake_Obama.mp4", "wild_fake_Guy.mp4", "wild_real_Taxi.mp4", "facenet_real_video.mp4"]


def frames_of(path: Path, every: int = 6, count: int = 120) -> list[np.ndarray]:
    return [f.rgb for i, f in enumerate(iter_frames(path, max_frames=count, max_side=640)) if i % every == 0]


@pytest.mark.parametrize("name", SHARED_VIDEOS)
def test_litert_finds_mediapipes_faces_to_a_fraction_of_a_pixel(shared_data: Path, name: str) -> None:
    """Same model, same graph steps: the faces must be mediapipe's, not merely similar ones (the bundle
    was calibrated on mediapipe's crops). Scores differ by < 0.01 (mediapipe's warp and ours round
    differently), so where a candidate face scores right at the graph's 0.6 it can fall on the other
    side and move the weighted box by a few pixels, or a borderline second face can appear: allowed
    on at most one frame in ten, never more than 5 px."""
    graph, litert = BlazeFaceDetector(min_score=0.5), LiteRtBlazeFaceDetector(min_score=0.5)
    frames = frames_of(shared_data / "videos" / name)
    expected, found = graph.detect(frames), litert.detect(frames)
    faces = exact = recounted = 0
    for index, (ours, theirs) in enumerate(zip(found, expected, strict=True)):
        if len(ours) != len(theirs):
            longer = ours if len(ours) > len(theirs) else theirs
            assert min(f.score for f in longer) < 0.65, (name, index, ours, theirs)  # a borderline face only
            recounted += 1
            continue
        for mine, reference in zip(ours, theirs, strict=True):
            faces += 1
            moved = max(np.abs(mine.box - reference.box).max(), np.abs(mine.landmarks - reference.landmarks).max())
            assert moved < 5.0 and abs(mine.score - reference.score) < 0.01, (name, index, mine, reference)
            exact += bool(moved < 0.5)
    assert faces >= len(frames) // 2, f"{name}: too few faces to compare ({faces} in {len(frames)} frames)"
    assert exact >= 0.9 * faces, f"{name}: {exact} of {faces} faces within 0.5 px of mediapipe's"
    assert recounted <= max(1, len(frames) // 10), (
        f"{name}: {recounted} of {len(frames)} frames with another face count"
    )


def test_weighted_suppression_averages_overlapping_faces_by_score_and_keeps_separate_ones() -> None:
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.12, 0.1, 0.32, 0.3], [0.6, 0.6, 0.8, 0.8]], np.float32)
    keypoints = np.zeros((3, blazeface.KEYPOINTS, 2), np.float32)
    keypoints[1] += 0.1
    scores = np.array([0.9, 0.6, 0.7], np.float32)
    out = blazeface.weighted_nms(boxes, keypoints, scores)
    assert out.scores.tolist() == pytest.approx([0.9, 0.7])  # best first, each keeps its best score
    np.testing.assert_allclose(out.boxes[0], (0.9 * boxes[0] + 0.6 * boxes[1]) / 1.5, rtol=1e-6)
    np.testing.assert_allclose(out.keypoints[0], np.full((blazeface.KEYPOINTS, 2), 0.6 * 0.1 / 1.5), rtol=1e-5)
    np.testing.assert_allclose(out.boxes[1], boxes[2])


def test_min_score_above_the_graphs_threshold_filters_faces(shared_data: Path) -> None:
    frames = frames_of(shared_data / "videos" / "wild_fake_Obama.mp4", count=24)
    every = LiteRtBlazeFaceDetector(min_score=0.5).detect(frames)
    strict = LiteRtBlazeFaceDetector(min_score=0.999).detect(frames)
    scores = [f.score for faces in every for f in faces]
    assert scores and sum(len(f) for f in strict) == sum(s >= 0.999 for s in scores)


def test_blank_and_odd_frames_give_no_faces_and_keep_their_size() -> None:
    detector = LiteRtBlazeFaceDetector()
    assert detector.detect([np.zeros((90, 300, 3), np.uint8), np.full((333, 17, 3), 255, np.uint8)]) == [[], []]


def test_the_runtime_setting_picks_the_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(create_detector(Settings(face_detector="blazeface")), BlazeFaceDetector)  # the default
    litert = create_detector(Settings(face_detector="blazeface", blazeface_runtime="litert"))
    assert isinstance(litert, LiteRtBlazeFaceDetector) and litert.name == "blazeface"
    monkeypatch.setattr(blazeface, "litert_available", lambda: False)  # as without ai-edge-litert
    with pytest.raises(DfsInputError, match="ai-edge-litert is not installed"):
        create_detector(Settings(face_detector="blazeface", blazeface_runtime="litert"))
