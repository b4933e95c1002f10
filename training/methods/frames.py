"""What the four frame methods share: frame datasets (with optional I2G blends) and augmentation.

Augmentations work on the model-size uint8 crop and its manipulation mask together, with the
sample's own seeded generator, so a run is reproducible. They are the references' common set:
horizontal flip, JPEG re-compression, Gaussian blur, brightness/contrast; each method adds its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from torch.utils.data import Dataset

from training.data import FrameDataset, TrackRecord
from training.methods.base import Method


def basic_augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip, JPEG (quality 60-100), blur, brightness/contrast; each with probability 0.5 or less."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.3:
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 101))])
        if ok:
            image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    if rng.random() < 0.2:
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.3, 1.5)))
    if rng.random() < 0.3:
        alpha, beta = float(rng.uniform(0.8, 1.2)), float(rng.uniform(-20, 20))
        image = cv2.convertScaleAbs(image, alpha=alpha, beta=beta)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


class FrameMethod(Method):
    """Frame datasets for a frame model; ``--fakes`` chooses dataset fakes and/or I2G blends."""

    frames_per_track_train: int = 32
    frames_per_track_val: int = 8

    def fake_maker(self, sources: Sequence[TrackRecord]):  # noqa: ANN201 - a FakeMaker or None
        if self.args.fakes == "data":
            return None
        from training.blended import BlendedFakes

        return BlendedFakes(sources, seed=self.args.seed)

    def datasets(self, train: Sequence[TrackRecord], val: Sequence[TrackRecord]) -> tuple[Dataset, Dataset]:
        train_set = FrameDataset(
            train,
            self.spec,
            frames_per_track=self.frames_per_track_train,
            fake_maker=self.fake_maker(train),
            use_data_fakes=self.args.fakes != "blended",
            augment=basic_augment,
            seed=self.args.seed,
        )
        # With blended fakes the validation reals get blended twins too (fixed seed), or real-only
        # data would have one class in validation and no AUC to select the best checkpoint by.
        val_set = FrameDataset(val, self.spec, frames_per_track=self.frames_per_track_val,
                               fake_maker=self.fake_maker([*train, *val]), seed=self.args.seed + 1)
        return train_set, val_set
