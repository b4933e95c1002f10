"""Pure stages: tracking, crop planning and warping, the scoring formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from export.manifest import Calibration
from models.spec import FACE_TEMPLATE_256, CropRule, ModelSpec
from service.pipeline import scores
from service.pipeline.crops import (
    SamplingOptions,
    box_matrix,
    clip_windows,
    frame_positions,
    plan_crops,
    similarity_matrix,
)
from service.pipeline.decode import upright
from service.pipeline.faces import Face
from service.pipeline.tracks import IouTracker, box_iou

TEMPLATE = FACE_TEMPLATE_256


def face_at(x: float, y: float, side: float = 100.0) -> Face:
    box = np.array([x, y, x + side, y + side], np.float32)
    marks = np.array(TEMPLATE, np.float32) / 256 * side + [x, y]
    return Face(box=box, score=0.99, landmarks=marks.astype(np.float32))


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    assert box_iou(a, b)[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])


def test_tracker_links_two_faces_and_interpolates_gaps() -> None:
    tracker = IouTracker(iou_threshold=0.3, max_gap=4)
    for t in range(20):
        faces = [face_at(10 + t, 10), face_at(300 - t, 50)]
        if t in (5, 6):  # the detector misses the first face on two frames
            faces = faces[1:]
        tracker.update(t, faces[::-1] if t % 2 else faces)  # order of detections must not matter
    tracks = tracker.finish(min_detections=4)
    assert len(tracks) == 2
    first = min(tracks, key=lambda t: t.boxes[0, 0])
    assert first.first_frame == 0 and first.last_frame == 19 and len(first.frame_indices) == 20
    assert not first.detected[5] and not first.detected[6] and first.detected[7]
    assert first.boxes[5, 0] == pytest.approx(15.0)  # interpolated between frames 4 and 7


def test_tracker_splits_after_long_gap_and_drops_short_tracks() -> None:
    tracker = IouTracker(iou_threshold=0.3, max_gap=2)
    for t in list(range(0, 6)) + list(range(12, 18)):
        tracker.update(t, [face_at(50, 50)])
    tracker.update(30, [face_at(400, 400)])  # a one-frame false positive
    tracks = tracker.finish(min_detections=3)
    assert [(t.first_frame, t.last_frame) for t in tracks] == [(0, 5), (12, 17)]


def test_clip_windows() -> None:
    windows = clip_windows(100, 32, stride=32, max_clips=8)
    assert [w[0] for w in windows] == [0, 32, 64] and all(len(w) == 32 for w in windows)
    spread = clip_windows(200, 32, stride=1, max_clips=4)
    assert [w[0] for w in spread] == [0, 56, 112, 168]
    short = clip_windows(20, 32, stride=1, max_clips=8)
    assert len(short) == 1 and short[0].tolist()[:22] == list(range(20)) + [18, 17]
    assert clip_windows(1, 4, 1, 1)[0].tolist() == [0, 0, 0, 0]
    assert frame_positions(100, 5).tolist() == [0, 25, 50, 74, 99]
    assert frame_positions(3, 8).tolist() == [0, 1, 2]


def test_similarity_matrix_recovers_a_known_transform() -> None:
    template = np.array(TEMPLATE) * (224 / 256)
    angle, scale, shift = 0.3, 0.5, np.array([40.0, -12.0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) * scale
    # landmarks in a frame such that rot @ p + shift == template
    frame_points = (np.linalg.inv(rot) @ (template - shift).T).T
    matrix = similarity_matrix(np.stack([frame_points, frame_points]), template)
    assert matrix[:, :2] == pytest.approx(rot, abs=1e-6)
    assert matrix[:, 2] == pytest.approx(shift, abs=1e-6)


def test_box_matrix_centres_the_face() -> None:
    matrix = box_matrix(np.array([100, 50, 200, 170]), scale=1.5, size=300)
    centre = matrix @ np.array([150, 110, 1.0])
    assert centre == pytest.approx([150, 150])
    assert matrix[0, 0] == pytest.approx(300 / (120 * 1.5))


def test_plan_crops_for_clip_and_frame_models() -> None:
    tracker = IouTracker()
    for t in range(70):
        tracker.update(t, [face_at(10, 10)])
    tracks = tracker.finish()
    clip_spec = ModelSpec(
        "clipper",
        "clip",
        224,
        (0.5,) * 3,
        (0.5,) * 3,
        CropRule("align", template=TEMPLATE, template_size=256),
        num_frames=32,
    )
    frame_spec = ModelSpec("framer", "frame", 64, (0.5,) * 3, (0.5,) * 3, CropRule("box", scale=1.3))
    items = plan_crops(tracks, {"clipper": clip_spec, "framer": frame_spec}, SamplingOptions(32, 8, 5))
    clips = [i for i in items if i.model == "clipper"]
    frames = [i for i in items if i.model == "framer"]
    assert [c.frame_indices[0] for c in clips] == [0, 32] and len(frames) == 5
    # one transform per clip: every frame of a clip shares it
    assert all((c.matrices == c.matrices[0]).all() for c in clips)
    # the face's landmarks land on the template
    warped = (clips[0].matrices[0] @ np.c_[face_at(10, 10).landmarks, np.ones(5)].T).T
    assert warped == pytest.approx(np.array(TEMPLATE) * 224 / 256, abs=1e-3)


def test_upright_rotation() -> None:
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 0] = 255  # top-left
    turned = upright(image, 90)  # 90 degrees counter-clockwise
    assert turned.shape == (3, 2, 3) and turned[2, 0, 0] == 255


def test_score_formula() -> None:
    identity = Calibration()
    track = scores.track_model_score([0.0, 2.0], identity)
    assert track.score == pytest.approx((0.5 + scores.sigmoid(2.0)) / 2)
    shifted = scores.track_model_score([0.0], Calibration(threshold=0.8, temperature=2.0))
    assert shifted.score == pytest.approx(scores.sigmoid((0 - math.log(4)) / 2))
    combined = scores.ensemble({"a": 0.9, "b": 0.2}, {"a": 3.0})
    assert combined == pytest.approx(scores.sigmoid((3 * scores.logit(0.9) + scores.logit(0.2)) / 4))


def test_same_shape_chunks_cap_the_size_and_never_span_a_resolution_change() -> None:
    from types import SimpleNamespace

    from service.pipeline.decode import same_shape_chunks

    shapes = [(4, 4, 3)] * 5 + [(2, 2, 3)] * 2 + [(4, 4, 3)]
    frames = [SimpleNamespace(index=i, rgb=np.zeros(shape, np.uint8)) for i, shape in enumerate(shapes)]
    chunks = [[f.index for f in chunk] for chunk in same_shape_chunks(frames, 3)]
    assert chunks == [[0, 1, 2], [3, 4], [5, 6], [7]]
    assert list(same_shape_chunks([], 3)) == []
