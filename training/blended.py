"""I2G blended fakes from real faces only (``--fakes blended``), for frames and for clips.

The recipe of PCL-I2G's generator (Zhao et al., ICCV 2021; the unofficial reference
jtchen0528/PCL-I2G, ``data/I2G_dataset.py`` and ``generate_I2G.py``), adapted to what our
preprocessing stores — box-centred loose crops with five landmarks — rather than 256 px aligned
crops with 68 points:

1. source: a face of a *different* identity whose landmarks are nearest the target's (sum of L2
   distances in loose-crop coordinates, where every face has the same scale);
2. the source is warped onto the target by the similarity transform between their landmarks
   (the reference's crops are pre-aligned, ours are not);
3. mask: 50% the convex hull of the face (the five points pushed outwards from their centroid so
   the hull spans brows to chin, as the 68-point hull does), 50% a random non-empty union of part
   regions (eyes with their brows, nose, mouth) — the five-point stand-in for the 8 part hulls;
4. elastic deformation of the mask (a random displacement on a 6x6 grid, sigma 4 px, smoothly
   upsampled), then a 35 x 35 Gaussian blur. Both are the reference's sizes at its 256 px alignment,
   where the face fills the image (CelebA-HQ quad: half-width = 2 x eye distance, so the eyes are
   ~64 px apart); our loose crops hold the face at whatever size it was filmed, so both scale with
   the face's eye distance / 64, not with the crop;
5. colour transfer: the source's per-channel mean inside the mask is moved to the target's;
6. blend: out = M * source + (1 - M) * target; the returned mask is M ("1 where forged").

JPEG and flips come afterwards from the datasets' augmentation. For clips, one recipe (mask shape
and deformation) and one source track serve every frame, so the forgery is temporally coherent
the way face-swap videos are, and only its artefacts, not flicker, give it away; a clip is flipped
(p 0.5) as a whole, frames and mask together.

``flicker`` (clips only, 0 = off) makes the clip's blend drift from frame to frame the way a
forgery made one frame at a time does (FTCN's premise: frame-wise generators leave temporal
incoherence): each frame's mask deformation, source placement, source brightness and mask opacity
are the clip's own plus a small independent draw. A fully temporal network (FTCN's spatial kernels
are 1) cannot see a coherent blend's spatial artefacts, only this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from models.spec import ModelSpec
from service.pipeline.crops import similarity_matrix
from training.data import ClipDataset, EpochSeeded, FakeMaker, Sample, TrackRecord, loose_to_model, normalize, warp
from training.degrade import Degradation
from training.errors import TrainingInputError
from training.options import BLEND_SOURCES

HULL_SPREAD = 1.8  # five-point hull pushed outwards: eyes/mouth -> brows/chin
GRID = 6
# The reference's sizes, for a face whose eyes are REFERENCE_EYE_DISTANCE px apart (see step 4).
DEFORM_SIGMA = 4.0
BLUR_KERNEL = 35
REFERENCE_EYE_DISTANCE = 64.0
PARTS = ("left_eye", "right_eye", "nose", "mouth")


@dataclass(frozen=True)
class BlendRecipe:
    """Everything random about one blend, drawn once (per frame, or per clip)."""

    hull: bool
    parts: tuple[str, ...]
    displacement: np.ndarray  # (GRID, GRID, 2) unit normal; x DEFORM_SIGMA x the face scale = pixels

    @classmethod
    def draw(cls, rng: np.random.Generator) -> BlendRecipe:
        hull = bool(rng.random() < 0.5)
        chosen = tuple(p for p in PARTS if rng.random() < 0.5) or (PARTS[int(rng.integers(len(PARTS)))],)
        # unit normal: face_mask scales it by the face's size, which a clip's recipe does not fix
        return cls(hull, chosen, rng.normal(0.0, 1.0, size=(GRID, GRID, 2)))


def landmarks_in_crop(record: TrackRecord, position: int) -> np.ndarray:
    """The five landmarks of a stored frame in its loose crop's pixel coordinates."""
    points = record.landmarks5([position])[0]
    matrix = record.loose_matrix(position)
    return points @ matrix[:, :2].T + matrix[:, 2]


def face_mask(landmarks: np.ndarray, size: int, recipe: BlendRecipe) -> np.ndarray:
    """Blending mask M in [0, 1] (size x size) for five landmarks, per the recipe."""
    mask = np.zeros((size, size), np.float32)
    eye_l, eye_r, nose, mouth_l, mouth_r = landmarks
    eye_distance = max(float(np.linalg.norm(eye_r - eye_l)), 1.0)
    if recipe.hull:
        centre = landmarks.mean(axis=0)
        spread = centre + (landmarks - centre) * HULL_SPREAD
        cv2.fillConvexPoly(mask, cv2.convexHull(spread.astype(np.int32)), 1.0)
    else:
        angle = float(np.degrees(np.arctan2(*(eye_r - eye_l)[::-1])))
        brow_lift = np.array([0.0, -0.18 * eye_distance])
        eye_axes = (0.38 * eye_distance, 0.32 * eye_distance)  # eye with its brow
        mouth_width = float(np.linalg.norm(mouth_r - mouth_l))
        regions = {
            "left_eye": (eye_l + brow_lift, eye_axes),
            "right_eye": (eye_r + brow_lift, eye_axes),
            "nose": (nose - np.array([0.0, 0.12 * eye_distance]), (0.28 * eye_distance, 0.45 * eye_distance)),
            "mouth": ((mouth_l + mouth_r) / 2, (0.62 * mouth_width + 2, 0.3 * eye_distance)),
        }
        for part in recipe.parts:
            centre, axes = regions[part]
            cv2.ellipse(mask, (int(centre[0]), int(centre[1])), (int(axes[0]), int(axes[1])), angle, 0, 360, 1.0, -1)
    return deform_and_blur(mask, recipe.displacement, eye_distance / REFERENCE_EYE_DISTANCE)


def deform_and_blur(mask: np.ndarray, displacement: np.ndarray, face_scale: float) -> np.ndarray:
    """Elastic deformation from a coarse unit displacement grid, then the I2G Gaussian blur.

    ``face_scale``: the face's size relative to the reference's 256 px alignment (eye distance / 64);
    the displacement (sigma 4 px) and the 35 px kernel scale with it, so the soft edge is as wide
    relative to the face as the reference's, whatever the crop.
    """
    size = mask.shape[0]
    pixels = (displacement * DEFORM_SIGMA * face_scale).astype(np.float32)
    field = cv2.resize(pixels, (size, size), interpolation=cv2.INTER_CUBIC)
    grid_x, grid_y = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    deformed = cv2.remap(mask, grid_x + field[..., 0], grid_y + field[..., 1], cv2.INTER_LINEAR, borderValue=0)
    kernel = max(3, round(BLUR_KERNEL * face_scale) | 1)
    return np.clip(cv2.GaussianBlur(deformed, (kernel, kernel), 0), 0.0, 1.0)


def colour_transfer(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift the source's per-channel mean inside the mask onto the target's (float32).

    The mask-weighted sums are one matrix-vector product per image (BLAS) in float32: with
    ``--blend-flicker`` every frame of a clip is blended, and float64 reductions made blending
    ~80% of a blended clip's loading time on the 2-core CPU, as long as the model's training step.
    """
    weights = mask.reshape(-1).astype(np.float32)
    total = max(float(weights.sum()), 1e-6)
    source32 = source.astype(np.float32)
    shift = (weights @ target.reshape(-1, 3).astype(np.float32) - weights @ source32.reshape(-1, 3)) / total
    return np.clip(source32 + shift, 0, 255)


@dataclass(frozen=True)
class FrameJitter:
    """One frame's departure from its clip's blend (see ``flicker`` in the module docstring)."""

    offset: tuple[float, float] = (0.0, 0.0)  # source placement, in eye distances
    gain: float = 1.0  # source brightness after colour transfer
    opacity: float = 1.0  # mask scale

    @classmethod
    def draw(cls, rng: np.random.Generator, amount: float) -> FrameJitter:
        dx, dy = rng.normal(0.0, 0.02 * amount, size=2)
        return cls(
            (float(dx), float(dy)),
            float(1.0 + rng.normal(0.0, 0.03 * amount)),
            float(1.0 - rng.uniform(0.0, 0.25 * min(amount, 1.0))),
        )


def blend(
    target: np.ndarray,
    target_marks: np.ndarray,
    source: np.ndarray,
    source_marks: np.ndarray,
    recipe: BlendRecipe,
    jitter: FrameJitter | None = None,
    colour_match: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The blended fake (uint8) and its mask M (float32), both at the target's size. ``colour_match``
    False keeps the source's own colours (a self-blend's colour shift is its artefact)."""
    size = target.shape[0]
    jitter = jitter or FrameJitter()
    matrix = similarity_matrix(source_marks[None], target_marks).copy()
    eye_distance = max(float(np.linalg.norm(target_marks[1] - target_marks[0])), 1.0)
    matrix[:, 2] += np.asarray(jitter.offset) * eye_distance
    aligned = cv2.warpAffine(source, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mask = face_mask(target_marks, size, recipe) * jitter.opacity
    matched = colour_transfer(aligned, target, mask) if colour_match else aligned.astype(np.float32)
    shifted = matched * np.float32(jitter.gain)
    base = target.astype(np.float32)
    out = base + mask[..., None].astype(np.float32) * (shifted - base)  # M * shifted + (1 - M) * target
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


class SourcePool:
    """Real faces to blend from, searched by landmark distance across identities."""

    def __init__(self, records: Sequence[TrackRecord], per_track: int = 4) -> None:
        self.records = [r for r in records if r.label == 0]
        entries, marks = [], []
        for r_index, record in enumerate(self.records):
            for position in np.unique(np.linspace(0, len(record) - 1, min(per_track, len(record))).round().astype(int)):
                entries.append((r_index, int(position)))
                marks.append(landmarks_in_crop(record, int(position)))
        self.entries = entries
        self.marks = np.asarray(marks).reshape(len(entries), 5, 2) if entries else np.zeros((0, 5, 2))
        self.identities = np.array([self.records[r].identity for r, _ in entries])

    def nearest(self, target_marks: np.ndarray, identity: str) -> tuple[TrackRecord, int] | None:
        """The nearest face (sum of point distances) of another identity, or None if there is none."""
        allowed = self.identities != identity
        if not allowed.any():
            return None
        distances = np.linalg.norm(self.marks - target_marks[None], axis=2).sum(axis=1)
        distances[~allowed] = np.inf
        r_index, position = self.entries[int(np.argmin(distances))]
        return self.records[r_index], position


class BlendedFakes:
    """A ``FakeMaker`` for :class:`training.data.FrameDataset`: real loose crop -> blended fake."""

    def __init__(self, records: Sequence[TrackRecord], seed: int = 0) -> None:
        self.pool = SourcePool(records)
        self.seed = seed

    def __call__(
        self, record: TrackRecord, position: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray] | None:
        target_marks = landmarks_in_crop(record, position)
        found = self.pool.nearest(target_marks, record.identity)
        if found is None:
            return None
        source_record, source_position = found
        return blend(
            record.image(position),
            target_marks,
            source_record.image(source_position),
            landmarks_in_crop(source_record, source_position),
            BlendRecipe.draw(rng),
        )


def altered_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The face's own pixels, slightly off in colour and in sharpness: the source of a self-blend.

    Self-blended images (Shiohara & Yamasaki, CVPR 2022) blend a face with such a copy of itself, so
    the fake differs from the real only by a blending boundary and a colour/frequency mismatch inside
    it, which every face swap leaves and which no identity or expression cue can stand in for. The
    ranges are small on purpose: a shift a person would notice teaches nothing a good forgery has.
    """
    out = image.astype(np.float32)
    out = out * np.float32(rng.uniform(0.9, 1.1)) + rng.uniform(-15, 15, size=3).astype(np.float32)  # contrast, RGB
    hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-4, 4)) % 180  # hue, OpenCV's 0-180 scale
    hsv[..., 1] *= np.float32(rng.uniform(0.85, 1.15))
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:  # softer: a resampling loss
        size = image.shape[1], image.shape[0]
        factor = rng.uniform(0.5, 0.85)
        small = cv2.resize(out, (max(1, round(size[0] * factor)), max(1, round(size[1] * factor))), cv2.INTER_AREA)
        out = cv2.resize(small, size, interpolation=cv2.INTER_LINEAR)
    elif kind == 1:  # sharper: unsharp mask
        blurred = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.8, 1.6))
        out = out + np.float32(rng.uniform(0.3, 0.8)) * (out - blurred)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class SelfBlendDraw:
    """One self-blend's geometry and the seed of its alteration.

    A frame takes a fresh draw; a clip (FTCN) takes one for all its frames, so its altered copy is
    altered alike in every frame (``seed``) and only the flicker, if any, drifts.
    """

    scale: float  # the copy is scaled by this about the landmarks' centre
    offset: tuple[float, float]  # and moved by this, in eye distances
    opacity: float  # mask scale
    seed: int  # altered_copy's draw, for a clip

    @classmethod
    def draw(cls, rng: np.random.Generator) -> SelfBlendDraw:
        scale = float(rng.uniform(0.95, 1.05))
        offset = (float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04)))
        opacity = float(rng.choice([0.25, 0.5, 0.75, 1.0]))
        return cls(scale, offset, opacity, 0)

    def source_marks(self, marks: np.ndarray) -> np.ndarray:
        """Where the copy's landmarks are said to be, so that the warp onto the target scales it by ``scale``."""
        centre = marks.mean(axis=0)
        return centre + (marks - centre) / self.scale

    def jitter(self, flicker: FrameJitter | None = None) -> FrameJitter:
        """The blend's placement and opacity, with a frame's flicker on top when given."""
        if flicker is None:
            return FrameJitter(offset=self.offset, gain=1.0, opacity=self.opacity)
        offset = (self.offset[0] + flicker.offset[0], self.offset[1] + flicker.offset[1])
        return FrameJitter(offset=offset, gain=flicker.gain, opacity=self.opacity * flicker.opacity)


#: what a blended clip is blended with: another identity's track and start frame, one self-blend, or nothing
ClipSource = tuple[TrackRecord, int] | SelfBlendDraw | None


class SelfBlendedFakes:
    """A ``FakeMaker``: a real crop blended with an altered copy of itself (:func:`altered_copy`),
    scaled by up to 5% and moved by up to 4% of the eye distance, through the same masks as the I2G
    blends (hull or parts, deformed, blurred), at an opacity of 0.25-1 and without colour transfer."""

    def __call__(
        self, record: TrackRecord, position: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray] | None:
        target = record.image(position)
        marks = landmarks_in_crop(record, position)
        geometry = SelfBlendDraw.draw(rng)
        return blend(
            target,
            marks,
            altered_copy(target, rng),
            geometry.source_marks(marks),
            BlendRecipe.draw(rng),
            geometry.jitter(),
            colour_match=False,
        )


class MixedFakes:
    """Each blended fake from one of several makers, picked at random (``--blend-source mixed``)."""

    def __init__(self, makers: Sequence[FakeMaker]) -> None:
        self.makers = list(makers)

    def __call__(
        self, record: TrackRecord, position: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray] | None:
        return self.makers[int(rng.integers(len(self.makers)))](record, position, rng)


class BlendedClipDataset(EpochSeeded, Dataset):
    """Real clips, each offered twice: as itself (label 0) and blended (label 1) with another identity
    (``blend_source`` other, I2G), with an altered copy of itself (self, one alteration for the whole
    clip) or either at random (mixed).

    With ``flip`` (training) each clip, real or blended, is mirrored with p 0.5 as a whole: every frame
    and the mask together, as ``ClipDataset(flip=True)`` does for dataset clips. Validation passes False.
    """

    def __init__(
        self,
        records: Sequence[TrackRecord],
        spec: ModelSpec,
        *,
        stride: int,
        max_clips_per_track: int,
        seed: int = 0,
        flip: bool = True,
        flicker: float = 0.0,
        flicker_min: float | None = None,
        degrade: float = 0.0,
        blend_source: str = "other",
    ) -> None:
        if blend_source not in BLEND_SOURCES:
            raise TrainingInputError(f"blend_source must be one of {', '.join(BLEND_SOURCES)}, not {blend_source!r}")
        reals = [r for r in records if r.label == 0]
        self.clips = ClipDataset(
            reals, spec, stride=stride, max_clips_per_track=max_clips_per_track, flip=flip, seed=seed, degrade=degrade
        )
        self.pool = SourcePool(reals)
        self.spec = spec
        self.seed = seed
        self.flip = flip
        self.flicker = flicker
        # A clip's drift is drawn from [flicker_min, flicker] when a range is given: real frame-wise
        # forgeries drift by different amounts, and one fixed amount teaches only that amount.
        self.flicker_min = flicker if flicker_min is None else flicker_min
        self.blend_source = blend_source

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.clips.set_epoch(epoch)  # the real clips' own augmentation

    def __len__(self) -> int:
        return 2 * len(self.clips)

    def labels(self) -> list[int]:
        return [0, 1] * len(self.clips)

    def __getitem__(self, index: int) -> Sample:
        clip_index, make_fake = divmod(index, 2)
        if not make_fake:
            return self.clips[clip_index]  # flipped (or not) by ClipDataset with its (seed, epoch, index) draw
        r_index, window = self.clips.items[clip_index]
        record = self.clips.records[r_index]
        rng = self.rng(index)
        source: ClipSource
        if self.blend_source == "self" or (self.blend_source == "mixed" and rng.random() < 0.5):
            source = replace(SelfBlendDraw.draw(rng), seed=int(rng.integers(2**31)))
        else:
            source = self.pool.nearest(landmarks_in_crop(record, int(window[0])), record.identity)
        recipe = BlendRecipe.draw(rng)
        degradation = self.clips.degradation(rng)  # as for the real clips: either class, one draw per clip
        frames, mask = self.blended_clip(record, window, source, recipe, rng, degradation)
        if self.flip and rng.random() < 0.5:
            frames, mask = frames[:, :, ::-1], mask[:, ::-1]
        label = 1 if source is not None else 0
        video = record.video + ("#blended" if label else "")
        mask_tensor = torch.from_numpy(np.ascontiguousarray(mask, np.float32))
        return Sample(normalize(self.spec, np.ascontiguousarray(frames)), label, mask_tensor, video, track=record.key)

    def clip_flicker(self, rng: np.random.Generator | None) -> float:
        """This clip's drift amount: ``flicker``, or a draw from its range (none without ``rng``)."""
        if rng is None:
            return 0.0
        if self.flicker_min < self.flicker:
            return float(rng.uniform(self.flicker_min, self.flicker))
        return self.flicker

    def blended_clip(
        self,
        record: TrackRecord,
        window: np.ndarray,
        source: ClipSource,
        recipe: BlendRecipe,
        rng: np.random.Generator | None = None,
        degradation: Degradation | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Model-size frames (T, S, S, 3) of ``window`` blended with ``source``, and their mean mask.

        ``source`` is another identity's track and start (I2G) or one self-blend draw for the whole clip.
        Without a source (no other identity) the frames stay real and the mask is zero. With
        ``self.flicker`` each frame's recipe and placement drift independently (drawn from ``rng``).
        ``degradation`` applies to each blended frame at the stored crop's size, before the crop to the
        model's input, where :class:`ClipDataset` degrades the real clips.
        """
        flicker = self.clip_flicker(rng)
        size = self.spec.input_size
        matrices = loose_to_model(self.spec, record, list(window))
        frames, masks = [], []
        for t, (position, matrix) in enumerate(zip(window, matrices, strict=True)):
            image = record.image(int(position))
            mask = np.zeros(image.shape[:2], np.float32)
            if source is not None:
                frame_recipe, jitter = recipe, None
                if flicker > 0 and rng is not None:
                    frame_recipe = BlendRecipe(
                        recipe.hull,
                        recipe.parts,
                        recipe.displacement + rng.normal(0.0, flicker, recipe.displacement.shape),
                    )
                    jitter = FrameJitter.draw(rng, flicker)
                marks = landmarks_in_crop(record, int(position))
                if isinstance(source, SelfBlendDraw):
                    # The same alteration in every frame (its own seed): a self-blend's colour and
                    # sharpness mismatch is steady, only the flicker drifts.
                    altered = altered_copy(image, np.random.default_rng(source.seed))
                    image, mask = blend(
                        image, marks, altered, source.source_marks(marks), frame_recipe, source.jitter(jitter), False
                    )
                else:
                    source_record, start = source
                    source_position = min(start + t, len(source_record) - 1)
                    image, mask = blend(
                        image,
                        marks,
                        source_record.image(source_position),
                        landmarks_in_crop(source_record, source_position),
                        frame_recipe,
                        jitter,
                    )
            frames.append(warp(degradation(image) if degradation else image, matrix, size))
            masks.append(warp(mask, matrix, size))
        return np.stack(frames), np.mean(masks, axis=0)
