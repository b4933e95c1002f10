"""A tiny preprocessed dataset (real/ and fake/ MP4s plus a photo), shared by the training tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import media


@pytest.fixture(scope="session")
def raw_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    for label, faces, count in (("real", 1, 2), ("fake", 2, 1)):
        (root / label).mkdir()
        for k in range(count):
            media.face_video(root / label / f"{label}{k}.mp4", faces=faces, frames=36, face_size=140 + 10 * k)
    import cv2

    cv2.imwrite(str(root / "real" / "astronaut.png"), cv2.cvtColor(media.astronaut_face(200), cv2.COLOR_RGB2BGR))
    (root / "fake" / "broken.mp4").write_bytes(b"not a video at all")
    return root


@pytest.fixture(scope="session")
def crops_dataset(raw_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.preprocess import main

    out = tmp_path_factory.mktemp("crops")
    assert main(["--input", str(raw_dataset), "--output", str(out), "--max-frames", "36", "--crop-size", "192"]) == 0
    return out


@pytest.fixture()
def crops_copy(crops_dataset: Path, tmp_path: Path) -> Path:
    target = tmp_path / "crops"
    shutil.copytree(crops_dataset, target)
    return target
