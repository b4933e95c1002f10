"""What the four frame methods share: frame datasets (with optional I2G blends) and augmentation.

Augmentations work on the model-size uint8 RGB crop and its manipulation mask together, with the
sample's own seeded generator, so a run is reproducible. Each method trains with its reference's
recipe (the reference implementation that ``models/<method>.py`` cites): :data:`COMMON_AUGMENT`
(flip, JPEG, blur, brightness/contrast) for DCL and LIB, :data:`PCL_I2G_AUGMENT` and :data:`ADVGAME_AUGMENT` for the others.

They are written with numpy and OpenCV rather than an augmentation library on purpose: every random
choice must come from the sample's ``np.random.Generator`` (libraries draw from global state, so a
sample would differ between worker processes, DDP ranks and resumed runs), and the geometric ops
(flip, shift-scale-rotate) must move the manipulation mask with the image, which PCL's consistency
volume and DCL's intra-instance loss read pixel by pixel.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import cv2
import numpy as np
from torch.utils.data import Dataset

from training.data import FrameDataset, TrackRecord
from training.degrade import DEGRADE_QUALITY, DEGRADE_SCALE, degrade, jpeg
from training.errors import TrainingInputError
from training.methods.base import Method
from training.options import MethodOptions, add_blend_source_argument

Image = np.ndarray  # (H, W, 3) uint8 RGB
Mask = np.ndarray  # (H, W) float32, 1 where forged


# ---- photometric ops: the image only ------------------------------------------------------------


def gaussian_noise(image: Image, std: float, rng: np.random.Generator) -> Image:
    """Additive per-pixel, per-channel Gaussian noise (albumentations' GaussNoise draws its variance 10..50)."""
    return np.clip(image + rng.normal(0.0, std, image.shape), 0, 255).astype(np.uint8)


def to_gray(image: Image) -> Image:
    """Grey in all three channels, so the model input keeps its shape."""
    return np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def brightness_contrast(image: Image, rng: np.random.Generator, recipe: Augmentation) -> Image:
    """x * (1 +- contrast) + (+- brightness), clipped (not mirrored at 0 as ``convertScaleAbs`` would)."""
    alpha = float(rng.uniform(1 - recipe.contrast, 1 + recipe.contrast))
    beta = float(rng.uniform(-recipe.brightness, recipe.brightness))
    return np.clip(image * alpha + beta, 0, 255).astype(np.uint8)


def fancy_pca(image: Image, rng: np.random.Generator, recipe: Augmentation) -> Image:
    """AlexNet's PCA lighting: shift every pixel along the image's colour principal axes by
    eigenvalue x N(0, 0.1), so the colour cast follows the image's own colour statistics."""
    pixels = image.reshape(-1, 3).astype(np.float64) / 255.0
    values, vectors = np.linalg.eigh(np.cov(pixels, rowvar=False))
    shift = vectors @ (rng.normal(0.0, recipe.fancy_pca_std, 3) * values)
    return np.clip(image + 255.0 * shift, 0, 255).astype(np.uint8)


def hsv_shift(image: Image, rng: np.random.Generator, recipe: Augmentation) -> Image:
    """Shift hue (OpenCV's 0..179 scale, wrapping), saturation and value by up to ``recipe.hsv`` each:
    the adversarial game's HueSaturationValue and PCL's colour jitter."""
    hue, saturation, value = (round(float(rng.uniform(-limit, limit))) for limit in recipe.hsv)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + hue) % 180
    hsv[..., 1:] = np.clip(hsv[..., 1:] + (saturation, value), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def random_erase(
    image: Image,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> Image:
    """torchvision's RandomErasing (value="random"): a rectangle of noise, up to 10 tries to fit one.

    The mask is left alone: the erased patch hides content but does not change what was forged.
    """
    height, width = image.shape[:2]
    for _ in range(10):
        target = rng.uniform(*area) * height * width
        aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        rows, cols = round(float(np.sqrt(target * aspect))), round(float(np.sqrt(target / aspect)))
        if 0 < rows < height and 0 < cols < width:
            top, left = int(rng.integers(0, height - rows + 1)), int(rng.integers(0, width - cols + 1))
            out = image.copy()
            out[top : top + rows, left : left + cols] = rng.integers(
                0, 256, (rows, cols, image.shape[2]), dtype=np.uint8
            )
            return out
    return image


# ---- geometric ops: image and mask together ---------------------------------------------------------


def shift_scale_rotate(
    image: Image, mask: Mask, rng: np.random.Generator, shift: float, scale: float, rotate: float
) -> tuple[Image, Mask]:
    """One random similarity about the centre for both (albumentations' ShiftScaleRotate, constant border).

    Outside the source the image is black and the mask 0: padding is nothing anyone forged.
    """
    height, width = image.shape[:2]
    angle, factor = float(rng.uniform(-rotate, rotate)), float(1 + rng.uniform(-scale, scale))
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, factor)
    matrix[:, 2] += rng.uniform(-shift, shift, 2) * (width, height)
    warped = [
        cv2.warpAffine(
            a, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        for a in (image, mask)
    ]
    return warped[0], warped[1]


ColourOp = Callable[[Image, np.random.Generator, "Augmentation"], Image]
COLOUR_OPS: dict[str, ColourOp] = {"brightness_contrast": brightness_contrast, "fancy_pca": fancy_pca, "hsv": hsv_shift}


@dataclass(frozen=True)
class OneOf:
    """With probability ``p``, one of the colour ``ops`` (named in :data:`COLOUR_OPS`), chosen uniformly."""

    p: float
    ops: tuple[str, ...]


@dataclass(frozen=True)
class Augmentation:
    """A method's augmentation recipe: probabilities and ranges; call it as ``(image, mask, rng)``.

    Ops run in a fixed order (flip, JPEG, blur, noise, colour, grey, shift-scale-rotate, erasing),
    each drawing its chance and parameters from ``rng``. An op with probability 0 draws nothing, so
    ops added for one method leave the random draws of the others' recipes as they were. Defaults are
    the common set.
    """

    flip: float = 0.5
    jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (60, 100)  # inclusive
    blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    noise: float = 0.0
    noise_std: tuple[float, float] = (10**0.5, 50**0.5)
    colour: tuple[OneOf, ...] = (OneOf(0.3, ("brightness_contrast",)),)
    brightness: float = 20.0  # grey levels
    contrast: float = 0.2  # gain 1 +- contrast
    fancy_pca_std: float = 0.1
    hsv: tuple[float, float, float] = (20.0, 30.0, 20.0)  # hue (0..179 scale), saturation, value
    gray: float = 0.0
    shift_scale_rotate: float = 0.0
    shift: float = 0.1  # fraction of the side
    scale: float = 0.2  # factor 1 +- scale
    rotate: float = 10.0  # degrees
    erase: float = 0.0
    degrade: float = 0.0  # resolution loss + JPEG (:func:`degrade`); 0 in the references' recipes
    degrade_scale: tuple[float, float] = DEGRADE_SCALE
    degrade_quality: tuple[int, int] = DEGRADE_QUALITY  # inclusive

    def __post_init__(self) -> None:
        unknown = {op for step in self.colour for op in step.ops} - set(COLOUR_OPS)
        if unknown:
            raise TrainingInputError(f"unknown colour ops {sorted(unknown)}; choose from {sorted(COLOUR_OPS)}")

    def __call__(self, image: Image, mask: Mask, rng: np.random.Generator) -> tuple[Image, Mask]:
        if _happens(self.flip, rng):
            image, mask = image[:, ::-1], mask[:, ::-1]
        if _happens(self.jpeg, rng):
            image = jpeg(image, int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))
        if _happens(self.blur, rng):
            image = cv2.GaussianBlur(np.ascontiguousarray(image), (0, 0), float(rng.uniform(*self.blur_sigma)))
        if _happens(self.noise, rng):
            image = gaussian_noise(image, float(rng.uniform(*self.noise_std)), rng)
        for step in self.colour:
            if _happens(step.p, rng):
                name = step.ops[0] if len(step.ops) == 1 else step.ops[int(rng.integers(len(step.ops)))]
                image = COLOUR_OPS[name](np.ascontiguousarray(image), rng, self)
        if _happens(self.gray, rng):
            image = to_gray(np.ascontiguousarray(image))
        if _happens(self.shift_scale_rotate, rng):
            image, mask = shift_scale_rotate(
                np.ascontiguousarray(image), np.ascontiguousarray(mask), rng, self.shift, self.scale, self.rotate
            )
        if _happens(self.erase, rng):
            image = random_erase(image, rng)
        if _happens(self.degrade, rng):
            image = degrade(image, rng, self.degrade_scale, self.degrade_quality)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def _happens(probability: float, rng: np.random.Generator) -> bool:
    """Whether an op runs; ops a recipe leaves out (probability 0) consume no random numbers."""
    return probability > 0 and rng.random() < probability


#: DCL and LIB: flip, JPEG 60..100 (p 0.3), Gaussian blur (p 0.2), brightness/contrast (p 0.3).
COMMON_AUGMENT = Augmentation()

#: PCL-I2G: blur, JPEG 30..100, brightness/contrast, colour jitter, random erasing (ImageNet
#: normalisation is the spec's). Its I2G stage adds 50% JPEG 60..100 and 50% flip of image and mask
#: together; the flip is here and that JPEG range lies inside this one.
PCL_I2G_AUGMENT = Augmentation(
    flip=0.5,
    jpeg=0.5,
    jpeg_quality=(30, 100),
    blur=0.5,
    brightness=0.2 * 255,
    colour=(OneOf(0.5, ("brightness_contrast",)), OneOf(0.5, ("hsv",))),
    erase=0.5,
)

#: The adversarial game (ah651/deepfake_adv ``create_train_transforms``): JPEG 60..100 (p 0.5),
#: Gaussian noise (p 0.1), flip, one of brightness/contrast, FancyPCA, HSV (p 0.7), grey (p 0.2),
#: shift 0.1 / scale 0.2 / rotate 10 (p 0.5). Never blur: the generators' blur is what the game is about.
ADVGAME_AUGMENT = Augmentation(
    flip=0.5,
    jpeg=0.5,
    jpeg_quality=(60, 100),
    blur=0.0,
    noise=0.1,
    brightness=0.2 * 255,
    colour=(OneOf(0.7, ("brightness_contrast", "fancy_pca", "hsv")),),
    gray=0.2,
    shift_scale_rotate=0.5,
)


def basic_augment(image: Image, mask: Mask, rng: np.random.Generator) -> tuple[Image, Mask]:
    """The common set as a function (DCL's two-view dataset augments each view with it)."""
    return COMMON_AUGMENT(image, mask, rng)


@dataclass(frozen=True)
class FrameOptions(MethodOptions):
    """The options every frame method shares."""

    degrade: float  # probability of a resolution loss and JPEG round trip per training frame
    frames_per_track: int  # training frames drawn from each track
    blend_source: str  # other: I2G from another identity; self: self-blended; mixed: either, at random


class FrameMethod(Method):
    """Frame datasets for a frame model; ``--fakes`` chooses dataset fakes and/or I2G blends."""

    frames_per_track_train: int = 32
    frames_per_track_val: int = 8
    #: the training augmentation of the method's reference implementation; methods with their own recipe override it
    augmentation: ClassVar[Augmentation] = COMMON_AUGMENT
    options_type: ClassVar[type[MethodOptions]] = FrameOptions
    method_options: FrameOptions

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        group = parser.add_argument_group("frame augmentation")
        group.add_argument(
            "--degrade",
            type=float,
            default=0.0,
            help="probability of losing resolution (x0.3-0.9) and re-compressing (JPEG 30-90) a training "
            "frame, on top of the method's recipe: breaks compression/sharpness shortcuts between "
            "sources (0 = the reference recipe)",
        )
        group.add_argument(
            "--frames-per-track",
            type=int,
            default=cls.frames_per_track_train,
            help="training frames drawn from each track, evenly spaced (fewer = shorter epochs)",
        )
        add_blend_source_argument(group)

    def training_augmentation(self) -> Augmentation:
        """The recipe the training frames get (validation frames are not augmented)."""
        degrade_p = self.method_options.degrade
        return replace(self.augmentation, degrade=degrade_p) if degrade_p else self.augmentation

    def fake_maker(self, sources: Sequence[TrackRecord]):  # noqa: ANN201 - a FakeMaker or None
        if self.options.fakes == "data":
            return None
        from training.blended import BlendedFakes, MixedFakes, SelfBlendedFakes

        choice = self.method_options.blend_source
        if choice == "self":
            return SelfBlendedFakes()
        others = BlendedFakes(sources, seed=self.options.seed)
        return others if choice == "other" else MixedFakes([others, SelfBlendedFakes()])

    def datasets(self, train: Sequence[TrackRecord], val: Sequence[TrackRecord]) -> tuple[Dataset, Dataset]:
        train_set = FrameDataset(
            train,
            self.spec,
            frames_per_track=self.method_options.frames_per_track,
            fake_maker=self.fake_maker(train),
            use_data_fakes=self.options.fakes != "blended",
            augment=self.training_augmentation(),
            seed=self.options.seed,
        )
        # With blended fakes the validation reals get blended twins too (fixed seed), or real-only
        # data would have one class in validation and no AUC to select the best checkpoint by.
        val_set = FrameDataset(
            val,
            self.spec,
            frames_per_track=self.frames_per_track_val,
            fake_maker=self.fake_maker([*train, *val]),
            seed=self.options.seed + 1,
        )
        return train_set, val_set
