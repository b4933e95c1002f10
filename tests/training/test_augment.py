"""The frame methods' own training recipes: augmentation, ImageNet init, the adversarial game's accumulation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.registry import CheckpointError
from training.methods import frames
from training.methods.frames import (
    ADVGAME_AUGMENT,
    COMMON_AUGMENT,
    PCL_I2G_AUGMENT,
    Augmentation,
    basic_augment,
    random_erase,
)
from training.train import parse_args

RECIPES = {"common": COMMON_AUGMENT, "pcl_i2g": PCL_I2G_AUGMENT, "advgame": ADVGAME_AUGMENT}
SIZE = 128


def scene() -> tuple[np.ndarray, np.ndarray]:
    """A dark textured image with bright, asymmetric shapes, and the mask of exactly those shapes."""
    rng = np.random.default_rng(7)
    image = np.full((SIZE, SIZE, 3), 40, np.uint8) + rng.integers(0, 20, (SIZE, SIZE, 3), dtype=np.uint8)
    cv2.rectangle(image, (20, 30), (60, 100), (220, 200, 210), -1)
    cv2.fillConvexPoly(image, np.array([[80, 15], [120, 40], [90, 60]], np.int32), (230, 230, 200))
    mask = (image.mean(axis=2) > 128).astype(np.float32)
    return image, mask


def bright(image: np.ndarray) -> np.ndarray:
    """Where the shapes are in an augmented image: Otsu's threshold, as brightness and contrast move them."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1] > 0


def method(name: str, tmp_path: Path, *extra: str):  # noqa: ANN201 - a Method
    from training.methods import method_class

    args = parse_args(["--method", name, "--data", str(tmp_path), "--output", str(tmp_path / "run"), *extra])
    return method_class(name)(args)


# ---- augmentation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipes_are_deterministic_under_the_seed(name: str) -> None:
    recipe = RECIPES[name]
    image, mask = scene()
    outputs = []
    for seed in range(6):
        first = recipe(image, mask, np.random.default_rng(seed))
        again = recipe(image, mask, np.random.default_rng(seed))
        assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
        assert first[0].shape == image.shape and first[0].dtype == np.uint8 and first[1].dtype == np.float32
        outputs.append(first[0])
    assert len({o.tobytes() for o in outputs}) > 3, "different seeds must give different samples"


@pytest.mark.parametrize("name", list(RECIPES))
def test_geometric_ops_move_the_mask_with_the_image(name: str) -> None:
    # erasing paints noise over content on purpose (mask unchanged): leave it out of the alignment check
    recipe = dataclasses.replace(RECIPES[name], erase=0.0)
    image, mask = scene()
    moved = 0
    for seed in range(40):
        out_image, out_mask = recipe(image, mask, np.random.default_rng(seed))
        from_content = bright(out_image)
        marked = out_mask > 0.5
        mismatch = np.logical_xor(from_content, marked).sum() / np.logical_or(from_content, marked).sum()
        assert mismatch < 0.03, f"seed {seed}: mask no longer covers the shapes ({mismatch:.1%} differ)"
        moved += not np.array_equal(marked, mask > 0.5)
    assert moved > 10, "flip (and shift-scale-rotate) should have moved the shapes"


def test_shift_scale_rotate_moves_image_and_mask_alike() -> None:
    only_geometry = Augmentation(flip=0.5, jpeg=0.0, blur=0.0, colour=(), shift_scale_rotate=1.0)
    image, mask = scene()
    for seed in range(10):
        out_image, out_mask = only_geometry(image, mask, np.random.default_rng(seed))
        assert not np.array_equal(out_mask, mask) and not np.array_equal(out_mask, mask[:, ::-1])
        from_content = bright(out_image)
        assert np.logical_xor(from_content, out_mask > 0.5).sum() < 0.03 * from_content.sum()


def test_pcl_jpeg_quality_reaches_below_60(monkeypatch: pytest.MonkeyPatch) -> None:
    qualities: list[int] = []

    def recording_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
        qualities.append(quality)
        return image

    monkeypatch.setattr(frames, "jpeg", recording_jpeg)
    image, mask = scene()
    for recipe, low in ((PCL_I2G_AUGMENT, 30), (COMMON_AUGMENT, 60), (ADVGAME_AUGMENT, 60)):
        qualities.clear()
        for seed in range(300):
            recipe(image, mask, np.random.default_rng(seed))
        assert qualities and min(qualities) >= low and max(qualities) <= 100
        assert (min(qualities) < 45) == (recipe is PCL_I2G_AUGMENT)


def test_advgame_never_blurs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    for name in ("GaussianBlur", "blur", "medianBlur", "boxFilter", "bilateralFilter"):
        original = getattr(cv2, name)

        def spy(*args, _name=name, _original=original, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(cv2, name, spy)
    image, mask = scene()
    for seed in range(200):
        ADVGAME_AUGMENT(image, mask, np.random.default_rng(seed))
    assert calls == []
    for seed in range(20):  # the spies do see a recipe that blurs
        PCL_I2G_AUGMENT(image, mask, np.random.default_rng(seed))
    assert "GaussianBlur" in calls


def test_random_erasing_fills_a_rectangle_with_noise_and_keeps_the_mask() -> None:
    image = np.full((SIZE, SIZE, 3), 128, np.uint8)
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[40:80, 40:80] = 1
    erased = random_erase(image, np.random.default_rng(3))
    changed = np.argwhere((erased != image).any(axis=2))
    (top, left), (bottom, right) = changed.min(axis=0), changed.max(axis=0)
    box = erased[top : bottom + 1, left : right + 1]
    assert len(changed) > 0.95 * box.shape[0] * box.shape[1], "a filled rectangle"
    assert box.std() > 40, "filled with noise"
    erase_only = Augmentation(flip=0.0, jpeg=0.0, blur=0.0, colour=(), erase=1.0)
    out_image, out_mask = erase_only(image, mask, np.random.default_rng(3))
    assert np.array_equal(out_mask, mask) and not np.array_equal(out_image, image)


def test_basic_augment_is_the_common_set() -> None:
    image, mask = scene()
    for seed in range(5):
        a = basic_augment(image, mask, np.random.default_rng(seed))
        b = COMMON_AUGMENT(image, mask, np.random.default_rng(seed))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize(
    ("name", "extra", "recipe"),
    [
        ("pcl_i2g", [], PCL_I2G_AUGMENT),
        ("advgame", ["--variant", "b0"], ADVGAME_AUGMENT),
        ("lib", ["--backbone", "mobilenet"], COMMON_AUGMENT),
        ("dcl", ["--backbone", "mobilenetv2_100"], COMMON_AUGMENT),
    ],
)
def test_each_method_trains_with_its_recipe(name: str, extra: list[str], recipe: Augmentation, tmp_path: Path) -> None:
    instance = method(name, tmp_path, *extra)
    assert instance.training_augmentation() is recipe
    train_set, val_set = instance.datasets([], [])
    frame_set = getattr(train_set, "frames", train_set)  # DCL wraps its frames in a two-view dataset
    if name != "dcl":  # DCL augments its two views itself, with basic_augment
        assert frame_set.augment is recipe
    assert val_set.augment is None


# ---- ImageNet init from a local file -----------------------------------------------------------------


def assert_loaded(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    own = module.state_dict()
    assert own, "nothing to compare"
    for key, value in own.items():
        assert torch.equal(value, saved[key]), key


def test_lib_backbone_weights_initialise_all_four_backbones(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    saved = timm.create_model("mobilenetv1_100", act_layer="relu").state_dict()
    torch.save(saved, tmp_path / "mobilenetv1.pth")
    model = method(
        "lib", tmp_path, "--backbone", "mobilenet", "--backbone-weights", str(tmp_path / "mobilenetv1.pth")
    ).build_model()
    for i in range(1, 5):
        assert_loaded(getattr(model, f"region_model{i}"), saved)


def test_lib_resnet34_loads_torchvision_layout(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    saved = torchvision.models.resnet34().state_dict()
    torch.save(saved, tmp_path / "resnet34.pth")
    model = method("lib", tmp_path, "--backbone-weights", str(tmp_path / "resnet34.pth")).build_model()
    assert_loaded(model.region_model1, saved)
    assert_loaded(model.region_model4, saved)


def test_advgame_backbone_weights_initialise_the_efficientnet(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    saved = timm.create_model("tf_efficientnet_b0").state_dict()
    torch.save(saved, tmp_path / "b0.pth")
    model = method("advgame", tmp_path, "--variant", "b0", "--backbone-weights", str(tmp_path / "b0.pth")).build_model()
    assert_loaded(model.feature_model, saved)


def test_backbone_weights_of_another_network_fail_clearly(tmp_path: Path) -> None:
    import timm

    torch.save(timm.create_model("tf_efficientnet_b0").state_dict(), tmp_path / "b0.pth")
    torch.save(timm.create_model("mobilenetv1_100").state_dict(), tmp_path / "mobilenet.pth")
    with pytest.raises(CheckpointError, match="does not fit the advgame b3 encoder"):
        method("advgame", tmp_path, "--variant", "b3", "--backbone-weights", str(tmp_path / "b0.pth")).build_model()
    with pytest.raises(CheckpointError, match="does not fit LIB's mobilenet backbone"):
        method("lib", tmp_path, "--backbone", "mobilenet", "--backbone-weights", str(tmp_path / "b0.pth")).build_model()


# ---- the adversarial game under --accumulate ------------------------------------------------------


def test_advgame_generators_step_every_micro_batch_while_the_detector_accumulates(tmp_path: Path) -> None:
    from training.methods.base import StepContext

    torch.manual_seed(0)
    game = method("advgame", tmp_path, "--variant", "b0", "--g-per-d", "2", "--accumulate", "2")
    model = game.build_model()
    module = game.training_module(model)
    game.optims = game.optimizers(model)
    scalers = {opt: torch.amp.GradScaler("cpu", enabled=False) for opt, _ in game.optims.values()}
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 0, 1])}

    def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in module.parameters()]

    def moved(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
        return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))

    for micro_step in range(2):
        detector, generator = snapshot(model), snapshot(game.generators["real"])
        ctx = StepContext(
            scalers=scalers, accumulation=2, micro_step=micro_step, device=torch.device("cpu"), autocast_dtype=None
        )
        game.training_step(module, batch, ctx)
        assert moved(generator, game.generators["real"]), f"generator did not step on micro-step {micro_step}"
        assert moved(detector, model) == (micro_step == 1), "the detector steps on the last micro-step only"
        assert all(p.requires_grad for p in model.parameters())
    assert game.optimizer("gen_real").state[next(game.generators["real"].parameters())]["step"] == 4  # 2 x g_per_d
