"""Datasets over ``training.preprocess`` output, cropping exactly as the service does.

Each stored frame is a loose crop cut by matrix ``B`` from the video frame; landmarks and boxes
are stored in frame coordinates. For a model we build the service's frame->crop matrix ``M`` with
the same functions (``service.pipeline.crops``) and warp the loose crop by ``M @ inverse(B)``:
the same pixels the service would give the model, with one extra resampling.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from models.spec import ModelSpec
from service.pipeline.crops import clip_windows, crop_matrices
from training.degrade import Degradation
from training.errors import TrainingFailure, TrainingFileMissing, TrainingInputError

log = logging.getLogger("training.data")


@dataclass
class TrackRecord:
    """One face track on disk (a ``track.json`` and its loose crops)."""

    folder: Path
    label: int
    split: str
    identity: str
    video: str
    data: dict = field(repr=False, default_factory=dict)

    @cached_property
    def meta(self) -> dict:
        return self.data or json.loads((self.folder / "track.json").read_text())

    @property
    def key(self) -> str:
        """What identifies the track: its folder (``tracks/<source>/t<k>`` under the data root).

        A video can hold several tracks; video-level scores take the mean per track, then the
        maximum over tracks (as the service does), so items must say which track they belong to.
        """
        return str(self.folder)

    @property
    def frame_indices(self) -> list[int]:
        return self.meta["frame_indices"]

    def __len__(self) -> int:
        return len(self.frame_indices)

    def image(self, position: int) -> np.ndarray:
        """Loose crop at ``position`` as RGB uint8."""
        path = self.folder / f"{self.frame_indices[position]:06d}.jpg"
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise TrainingFileMissing(path)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def loose_matrix(self, position: int) -> np.ndarray:
        return np.asarray(self.meta["matrices"][position], dtype=np.float64)

    def landmarks5(self, positions: Sequence[int]) -> np.ndarray:
        return np.asarray([self.meta["landmarks5"][p] for p in positions], dtype=np.float64)

    def box(self, position: int) -> np.ndarray:
        return np.asarray(self.meta["boxes"][position], dtype=np.float64)


def load_index(root: Path, splits: Sequence[str] | None = None) -> list[TrackRecord]:
    """Tracks listed in ``root/index.csv`` (optionally only some splits)."""
    index = root / "index.csv"
    if not index.is_file():
        raise TrainingFileMissing(
            f"{index} not found: run `python -m training.preprocess --input ... --output {root}` first"
        )
    records = []
    with index.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if splits and row["split"] not in splits:
                continue
            records.append(
                TrackRecord(root / row["track"], int(row["label"]), row["split"], row["identity"], row["source"])
            )
    return records


def _as3x3(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def loose_to_model(spec: ModelSpec, record: TrackRecord, positions: Sequence[int]) -> list[np.ndarray]:
    """Matrices mapping each loose crop onto the model input, as the service would crop the frame."""
    boxes = np.asarray([record.box(p) for p in positions])
    frame_to_model = crop_matrices(spec, boxes, record.landmarks5(positions))
    return [
        (_as3x3(m) @ np.linalg.inv(_as3x3(record.loose_matrix(p))))[:2]
        for m, p in zip(frame_to_model, positions, strict=True)
    ]


def warp(image: np.ndarray, matrix: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.warpAffine(image, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_CONSTANT)


def normalize(spec: ModelSpec, rgb: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float tensor (3, ..., H, W) normalised per the spec."""
    array = (rgb.astype(np.float32) / 255.0 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    tensor = torch.from_numpy(array)
    return tensor.movedim(-1, 0).contiguous()


@dataclass
class Sample:
    """What a frame dataset returns: model input, label, manipulation mask at input size, video, track.

    ``track`` comes last and defaults to "" so datasets that build samples positionally keep working;
    items without a track count as one track per video in :func:`training.metrics.per_video`.
    """

    image: torch.Tensor
    label: int
    mask: torch.Tensor
    video: str
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    track: str = ""


FakeMaker = Callable[[TrackRecord, int, np.random.Generator], tuple[np.ndarray, np.ndarray] | None]


class EpochSeeded:
    """Randomness as a pure function of (seed, epoch, index).

    So a sample is the same in whichever worker process or DDP rank draws it, a run repeats under
    its seed, and every epoch still sees new augmentations and blends: the loop calls
    :meth:`set_epoch` before each epoch (wrappers forward it to the datasets they hold).
    """

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))


class EpochConcatDataset(ConcatDataset):
    """Several datasets one after another, each told the epoch (see :class:`EpochSeeded`)."""

    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)


class FrameDataset(EpochSeeded, Dataset):
    """Single frames of tracks for frame models.

    ``fake_maker`` (real-only training, ``--fakes blended``) turns a real loose crop into a blended
    fake and its mask; with it, every real frame is also offered once as a fake. ``augment`` works
    on the model-size uint8 crop and its mask together.
    """

    def __init__(
        self,
        records: Sequence[TrackRecord],
        spec: ModelSpec,
        *,
        frames_per_track: int | None = None,
        fake_maker: FakeMaker | None = None,
        use_data_fakes: bool = True,
        augment: Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]] | None = None,
        seed: int = 0,
    ) -> None:
        self.spec = spec
        self.records = list(records)
        self.fake_maker = fake_maker
        self.augment = augment
        self.seed = seed
        self.items: list[tuple[int, int, bool]] = []  # (record, position, make_blended_fake)
        for r_index, record in enumerate(self.records):
            if record.label == 1 and not use_data_fakes:
                continue
            count = len(record)
            positions = (
                range(count)
                if not frames_per_track
                else np.unique(np.linspace(0, count - 1, min(count, frames_per_track)).round().astype(int))
            )
            for position in positions:
                self.items.append((r_index, int(position), False))
                if fake_maker is not None and record.label == 0:
                    self.items.append((r_index, int(position), True))

    def __len__(self) -> int:
        return len(self.items)

    def labels(self) -> list[int]:
        return [1 if blended else self.records[r].label for r, _, blended in self.items]

    def crop(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, str]:
        """Model-size uint8 crop, its manipulation mask, label and video, before augmentation."""
        r_index, position, blended = self.items[index]
        record = self.records[r_index]
        loose = record.image(position)
        mask_loose = np.zeros(loose.shape[:2], np.float32)
        label = record.label
        if blended:
            if self.fake_maker is None:
                raise TrainingFailure("blended items need a fake maker (FrameDataset(fake_maker=...))")
            made = self.fake_maker(record, position, rng)
            if made is not None:
                loose, mask_loose = made
                label = 1
        matrix = loose_to_model(self.spec, record, [position])[0]
        size = self.spec.input_size
        crop, mask = warp(loose, matrix, size), warp(mask_loose, matrix, size)
        if label == 1 and not blended:
            mask = np.ones_like(mask)  # a dataset fake without a mask: the whole face is suspect
        # a blended twin counts as its own (fake) video in video-level metrics
        return crop, mask, label, record.video + ("#blended" if blended and label == 1 else "")

    def __getitem__(self, index: int) -> Sample:
        rng = self.rng(index)
        crop, mask, label, video = self.crop(index, rng)
        if self.augment is not None:
            crop, mask = self.augment(crop, mask, rng)
        mask_tensor = torch.from_numpy(np.ascontiguousarray(mask, np.float32))
        track = self.records[self.items[index][0]].key
        # a dataset fake's all-ones mask is a stand-in ("the whole face is suspect"), not a measured one:
        # losses that read masks pixel by pixel (PCL's consistency volume) skip it
        mask_known = torch.tensor(not (label == 1 and not self.items[index][2]))
        return Sample(
            normalize(self.spec, crop), label, mask_tensor, video, track=track, extra={"mask_known": mask_known}
        )


class ClipDataset(EpochSeeded, Dataset):
    """Clips of ``spec.num_frames`` consecutive frames of a track (clip models), one transform per clip."""

    def __init__(
        self,
        records: Sequence[TrackRecord],
        spec: ModelSpec,
        *,
        stride: int,
        max_clips_per_track: int,
        flip: bool = False,
        seed: int = 0,
        degrade: float = 0.0,
    ) -> None:
        """``degrade``: share of clips that lose resolution and are re-compressed, one draw per clip
        applied to every frame (:class:`training.degrade.Degradation`)."""
        self.spec = spec
        self.records = list(records)
        self.flip = flip
        self.seed = seed
        self.degrade = degrade
        self.items: list[tuple[int, np.ndarray]] = []
        _check_some_consecutive(self.records)
        for r_index, record in enumerate(self.records):
            for window in track_clip_windows(record, spec.num_frames, stride, max_clips_per_track):
                self.items.append((r_index, window))

    def __len__(self) -> int:
        return len(self.items)

    def labels(self) -> list[int]:
        return [self.records[r].label for r, _ in self.items]

    def __getitem__(self, index: int) -> Sample:
        r_index, window = self.items[index]
        record = self.records[r_index]
        size = self.spec.input_size
        matrices = loose_to_model(self.spec, record, list(window))
        rng = self.rng(index)
        flip = self.flip and rng.random() < 0.5
        degradation = self.degradation(rng)
        images = [record.image(int(p)) for p in window]
        if degradation:
            images = [degradation(image) for image in images]
        clip = np.stack([warp(image, m, size) for image, m in zip(images, matrices, strict=True)])
        if flip:
            clip = clip[:, :, ::-1]
        mask = torch.full((size, size), float(record.label))
        return Sample(normalize(self.spec, clip), record.label, mask, record.video, track=record.key)

    def degradation(self, rng: np.random.Generator) -> Degradation | None:
        """A clip's degradation, with probability ``degrade`` (no draw at all when 0: runs without it
        see the random stream they always did)."""
        if self.degrade > 0 and rng.random() < self.degrade:
            return Degradation.draw(rng)
        return None


def consecutive_runs(frame_indices: Sequence[int]) -> list[tuple[int, int]]:
    """(first position, length) of each run of consecutive frame indices of a track."""
    if len(frame_indices) == 0:
        return []
    breaks = np.flatnonzero(np.diff(np.asarray(frame_indices)) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(frame_indices)]])
    return [(int(a), int(b - a)) for a, b in zip(starts, ends, strict=True)]


def track_clip_windows(record: TrackRecord, num_frames: int, stride: int, max_clips: int) -> list[np.ndarray]:
    """Clip windows (track positions) lying inside runs of consecutive frames.

    A clip model needs frames that follow each other; a track with gaps (frames lost in
    preprocessing) still gives the clips of its long-enough runs, instead of failing the whole run.
    Starts step by ``stride`` within each run and are thinned evenly to ``max_clips``, which for a
    gap-free track is exactly :func:`service.pipeline.crops.clip_windows`. When no run is long
    enough, the longest run is padded like a short track.
    """
    runs = consecutive_runs(record.frame_indices)
    if len(runs) <= 1:
        return clip_windows(len(record), num_frames, stride, max_clips)
    log.warning("%s: gaps in frame indices; clips only inside its %d consecutive runs", record.folder, len(runs))
    starts = [first + s for first, length in runs for s in range(0, length - num_frames + 1, stride)]
    if not starts:
        first, length = max(runs, key=lambda run: run[1])
        return [first + w for w in clip_windows(length, num_frames, stride, max_clips)]
    picked = np.asarray(starts)
    if len(picked) > max_clips:
        picked = picked[np.unique(np.linspace(0, len(picked) - 1, max_clips).round().astype(int))]
    return [np.arange(s, s + num_frames) for s in picked]


def _check_some_consecutive(records: Sequence[TrackRecord]) -> None:
    """Fail early when no track has two consecutive frames: the data was preprocessed with --frame-step > 1."""
    multi = [r for r in records if len(r) > 1]
    if multi and all(len(consecutive_runs(r.frame_indices)) == len(r) for r in multi):
        raise TrainingInputError(
            f"{multi[0].folder} (and every other track): clip models need consecutive frames "
            "(preprocess with --frame-step 1)"
        )


def collate(samples: list[Sample]) -> dict[str, object]:
    batch: dict[str, object] = {
        "image": torch.stack([s.image for s in samples]),
        "label": torch.tensor([s.label for s in samples], dtype=torch.long),
        "mask": torch.stack([s.mask for s in samples]),
        "video": [s.video for s in samples],
        "track": [s.track for s in samples],
    }
    for key in samples[0].extra:
        batch[key] = torch.stack([s.extra[key] for s in samples])
    return batch
