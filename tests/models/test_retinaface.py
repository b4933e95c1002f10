"""RetinaFace in the public layouts: real weights find the faces in real photos; both layouts load."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.registry import CheckpointError
from models.retinaface import RetinaFace, backbone_of, build_retinaface, detect_numpy, load_retinaface

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
WEIGHTS = SHARED_DATA / "weights" / "retinaface_mobilenet0.25_Final.pth"
PHOTOS = SHARED_DATA / "photos"


@pytest.fixture(scope="module")
def mobilenet() -> RetinaFace:
    if not WEIGHTS.is_file():
        pytest.skip(f"shared RetinaFace weights not found at {WEIGHTS} (../shared/data beside the checkout)")
    return load_retinaface(WEIGHTS)


def load_photo(name: str, max_side: int = 800) -> np.ndarray:
    """An RGB photo with its longer side cut to ``max_side`` (keeps the CPU forward fast)."""
    image = cv2.cvtColor(cv2.imread(str(PHOTOS / name)), cv2.COLOR_BGR2RGB)
    scale = min(1.0, max_side / max(image.shape[:2]))
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize(
    ("photo", "faces"),
    [
        ("facerec_obama.jpg", 1),
        ("facerec_two_people.jpg", 2),
        ("facerec_knn_examples_test_obama_and_biden.jpg", 3),
        ("facenet_multiface.jpg", 6),
    ],
)
def test_finds_every_face_with_plausible_landmarks(mobilenet: RetinaFace, photo: str, faces: int) -> None:
    image = load_photo(photo)
    found = detect_numpy(mobilenet, image, score_threshold=0.9)
    assert len(found) == faces
    assert found.boxes.shape == (faces, 4) and found.landmarks.shape == (faces, 5, 2)
    assert np.all(np.diff(found.scores) <= 0), "best face first"
    height, width = image.shape[:2]
    for box, marks in zip(found.boxes, found.landmarks, strict=True):
        x1, y1, x2, y2 = box
        assert 0 <= x1 < x2 <= width + 2 and 0 <= y1 < y2 <= height + 2
        assert (marks[:, 0] >= x1).all() and (marks[:, 0] <= x2).all()
        assert (marks[:, 1] >= y1).all() and (marks[:, 1] <= y2).all()
        left_eye, right_eye, nose, left_mouth, right_mouth = marks
        # image-left first: a colour-order or landmark-order slip flips or scrambles these
        assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])


def test_detect_feeds_bgr_minus_mean_and_decodes_with_the_variances(mobilenet: RetinaFace) -> None:
    """The detector tolerates a channel swap on easy photos, so pin the preprocessing exactly."""
    rgb = cv2.resize(load_photo("facerec_obama.jpg"), (320, 400))
    best = detect_numpy(mobilenet, rgb, score_threshold=0.0, max_faces=1)
    bgr = torch.from_numpy(rgb[..., ::-1].astype(np.float32) - np.float32([104, 117, 123])).permute(2, 0, 1)[None]
    with torch.no_grad():
        deltas, logits, marks = (t[0] for t in mobilenet(bgr))
    scores = logits.softmax(-1)[:, 1]
    anchor = int(scores.argmax())
    assert best.scores[0] == pytest.approx(float(scores[anchor]), abs=1e-6)
    cx, cy, w, h = mobilenet.priors(400, 320)[anchor].tolist()
    dx, dy, dw, dh = deltas[anchor].tolist()
    centre_x, centre_y = (cx + dx * 0.1 * w) * 320, (cy + dy * 0.1 * h) * 400
    size_w, size_h = w * np.exp(dw * 0.2) * 320, h * np.exp(dh * 0.2) * 400
    expected = [centre_x - size_w / 2, centre_y - size_h / 2, centre_x + size_w / 2, centre_y + size_h / 2]
    np.testing.assert_allclose(best.boxes[0], expected, rtol=1e-4)
    nose = ((cx + marks[anchor, 4].item() * 0.1 * w) * 320, (cy + marks[anchor, 5].item() * 0.1 * h) * 400)
    np.testing.assert_allclose(best.landmarks[0, 2], nose, rtol=1e-4)


def test_blank_image_has_no_face(mobilenet: RetinaFace) -> None:
    assert len(detect_numpy(mobilenet, np.full((240, 320, 3), 128, np.uint8))) == 0


def test_batch_equals_one_at_a_time(mobilenet: RetinaFace) -> None:
    a = cv2.resize(load_photo("facerec_obama.jpg"), (640, 480))
    b = cv2.resize(load_photo("facerec_two_people.jpg"), (640, 480))
    batch = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2).float()
    together = mobilenet.detect(batch, score_threshold=0.9)
    assert [len(r) for r in together] == [1, 2]
    for image, result in zip((a, b), together, strict=True):
        alone = detect_numpy(mobilenet, image, score_threshold=0.9)
        np.testing.assert_allclose(result.boxes, alone.boxes, atol=1e-2)
        np.testing.assert_allclose(result.scores, alone.scores, atol=1e-4)
        np.testing.assert_allclose(result.landmarks, alone.landmarks, atol=1e-2)


def test_max_faces_keeps_the_best(mobilenet: RetinaFace) -> None:
    image = load_photo("facenet_multiface.jpg")
    every = detect_numpy(mobilenet, image, score_threshold=0.9)
    best_two = detect_numpy(mobilenet, image, score_threshold=0.9, max_faces=2)
    assert len(every) == 6 and len(best_two) == 2
    np.testing.assert_allclose(best_two.boxes, every.boxes[:2])


def test_priors_follow_the_reference_order() -> None:
    net = build_retinaface("mobilenet0.25")
    height, width = 40, 56  # not multiples of 32: the reference rounds the grids up
    priors = net.priors(height, width)
    cells = [-(-height // s) * -(-width // s) for s in (8, 16, 32)]
    assert priors.shape == (2 * sum(cells), 4)
    # cell (0,0) of stride 8 with sizes 16 then 32, then cell (0,1)
    expected = [
        [4 / 56, 4 / 40, 16 / 56, 16 / 40],
        [4 / 56, 4 / 40, 32 / 56, 32 / 40],
        [12 / 56, 4 / 40, 16 / 56, 16 / 40],
    ]
    torch.testing.assert_close(priors[:3], torch.tensor(expected))
    # first anchor of the stride-32 level
    torch.testing.assert_close(priors[2 * (cells[0] + cells[1])], torch.tensor([16 / 56, 16 / 40, 256 / 56, 256 / 40]))
    assert priors is net.priors(height, width), "cached per size"


def test_resnet50_layout_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_retinaface("resnet50")
    state = net.state_dict()
    # the reference's RetinaFace(cfg_re50) has these 456 keys and 27,293,600 parameters
    assert len(state) == 456 and sum(p.numel() for p in net.parameters()) == 27_293_600
    assert {
        "body.conv1.weight",
        "body.layer4.2.conv3.weight",
        "fpn.output1.0.weight",
        "ssh3.conv7x7_3.1.running_var",
        "LandmarkHead.2.conv1x1.bias",
    } <= set(state)
    assert not any(k.startswith(("body.fc", "body.avgpool")) for k in state)
    assert backbone_of(state) == "resnet50"
    path = tmp_path / "Resnet50_Final.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    loaded = load_retinaface(path)
    assert loaded.config.name == "resnet50"
    image = torch.rand(1, 3, 96, 128) * 255
    mean = torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
    for mine, theirs in zip(net(image - mean), loaded(image - mean), strict=True):
        torch.testing.assert_close(mine, theirs)
    found = loaded.detect(image, score_threshold=0.0, max_faces=5)[0]
    assert found.boxes.shape == (5, 4) and found.scores.shape == (5,) and found.landmarks.shape == (5, 5, 2)


def test_missing_key_is_named(tmp_path: Path) -> None:
    state = build_retinaface("mobilenet0.25").state_dict()
    del state["ssh2.conv5X5_2.1.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"ssh2\.conv5X5_2\.1\.weight"):
        load_retinaface(path)


def test_checkpoint_without_batchnorm_counters_loads(tmp_path: Path) -> None:
    """Files saved before torch 0.4.1 have no ``num_batches_tracked``; they must still load."""
    torch.manual_seed(0)
    net = build_retinaface("mobilenet0.25")
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save({"state_dict": state}, path)
    loaded = load_retinaface(path)
    torch.testing.assert_close(loaded.state_dict()["ssh1.conv3X3.1.running_mean"], state["ssh1.conv3X3.1.running_mean"])
    # but one counter missing among the others is a damaged file
    partial = net.state_dict()
    del partial["fpn.merge1.1.num_batches_tracked"]
    torch.save(partial, path)
    with pytest.raises(CheckpointError, match=r"fpn\.merge1\.1\.num_batches_tracked"):
        load_retinaface(path)


def test_unknown_layout_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"backbone.conv.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"backbone\.conv\.weight"):
        load_retinaface(path)
