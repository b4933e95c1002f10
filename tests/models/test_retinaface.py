"""RetinaFace in the public layouts: real weights find the faces in real photos; layouts load."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.registry import CheckpointError
from models.retinaface import build_retinaface, detect_numpy, load_retinaface


@pytest.fixture(scope="module")
def mobilenet(shared_data: Path):  # noqa: ANN201
    return load_retinaface(shared_data / "weights" / "retinaface_mobilenet0.25_Final.pth")


def load_photo(shared_data: Path, name: str, max_side: int = 1024) -> np.ndarray:
    image = cv2.cvtColor(cv2.imread(str(shared_data / "photos" / name)), cv2.COLOR_BGR2RGB)
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
def test_finds_every_face(mobilenet, shared_data: Path, photo: str, faces: int) -> None:  # noqa: ANN001
    found = detect_numpy(mobilenet, load_photo(shared_data, photo), score_threshold=0.9)
    assert len(found.scores) == faces
    for box, marks in zip(found.boxes, found.landmarks, strict=True):
        assert (marks[:, 0] >= box[0] - 2).all() and (marks[:, 0] <= box[2] + 2).all()
        assert (marks[:, 1] >= box[1] - 2).all() and (marks[:, 1] <= box[3] + 2).all()
        left_eye, right_eye, nose, left_mouth, right_mouth = marks
        assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])


def test_batch_equals_one_at_a_time(mobilenet, shared_data: Path) -> None:  # noqa: ANN001
    a = cv2.resize(load_photo(shared_data, "facerec_obama.jpg"), (640, 480))
    b = cv2.resize(load_photo(shared_data, "facerec_two_people.jpg"), (640, 480))
    batch = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2).float()
    together = mobilenet.detect(batch)
    for image, result in zip((a, b), together, strict=True):
        alone = detect_numpy(mobilenet, image)
        np.testing.assert_allclose(result.boxes, alone.boxes, atol=1e-3)
        np.testing.assert_allclose(result.landmarks, alone.landmarks, atol=1e-3)


def test_resnet50_layout_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_retinaface("resnet50")
    assert sum(p.numel() for p in net.parameters()) == 27_293_600  # the released Resnet50_Final.pth
    assert "body.layer4.2.conv3.weight" in net.state_dict() and "fpn.output1.0.weight" in net.state_dict()
    path = tmp_path / "Resnet50_Final.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    loaded = load_retinaface(path)
    image = torch.rand(1, 3, 128, 160) * 255
    mean = torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
    for mine, theirs in zip(net(image - mean), loaded(image - mean), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_missing_key_is_named(tmp_path: Path) -> None:
    state = build_retinaface("mobilenet0.25").state_dict()
    del state["ssh2.conv5X5_2.1.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"ssh2\.conv5X5_2\.1\.weight"):
        load_retinaface(path)
