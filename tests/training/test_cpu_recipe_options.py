"""Options the CPU-trained bundle relies on: light FTCN, degradation, PCL's unknown masks, CPU autocast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models import create_model, get_spec
from training.train import parse_args


def test_light_ftcn_keeps_the_design_and_takes_its_own_clip_size() -> None:
    model = create_model("ftcn", width=0.25, input_size=96).eval()
    spec = get_spec("ftcn", width=0.25, input_size=96)
    assert spec.input_size == 96 and spec.num_frames == 32 and spec.crop == get_spec("ftcn").crop
    assert model.spec == spec
    # every convolution is still temporal-only (spatial kernel 1): the fully temporal design
    kernels = {m.kernel_size[1:] for m in model.modules() if isinstance(m, torch.nn.Conv3d)}
    assert kernels == {(1, 1)}
    paper = sum(p.numel() for p in create_model("ftcn").parameters())
    light = sum(p.numel() for p in model.parameters())
    assert light < paper / 10
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 96, 96))
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="expects clips"):
        model(torch.randn(1, 3, 32, 112, 112))
    with pytest.raises(ValueError, match="multiple of 16"):
        create_model("ftcn", input_size=100)


def test_ftcn_training_options_reach_the_model_kwargs(tmp_path: Path) -> None:
    from training.methods import method_class

    common = ["--method", "ftcn", "--data", str(tmp_path), "--output", str(tmp_path)]
    default = method_class("ftcn")(parse_args(common))
    assert default.model_kwargs() == {} and default.spec.input_size == 224
    light = method_class("ftcn")(parse_args([*common, "--width", "0.25", "--input-size", "112"]))
    assert light.model_kwargs() == {"width": 0.25, "input_size": 112} and light.spec.input_size == 112
    inflated = method_class("ftcn")(parse_args([*common, "--backbone", "mobilenetv2_100", "--input-size", "96"]))
    assert inflated.model_kwargs() == {"backbone": "mobilenetv2_100", "input_size": 96}
    assert "MobileNetV2" in inflated.spec.description


def test_degrade_loses_detail_for_either_class_and_is_off_in_the_reference_recipes(tmp_path: Path) -> None:
    from training.methods import method_class
    from training.methods.frames import COMMON_AUGMENT, degrade

    rng = np.random.default_rng(0)
    image = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    out = degrade(image, rng, (0.3, 0.3), (30, 30))
    assert out.shape == image.shape and out.dtype == np.uint8
    # fine detail is gone: neighbouring pixels differ far less than in the noise image
    assert np.abs(np.diff(out.astype(int), axis=1)).mean() < 0.5 * np.abs(np.diff(image.astype(int), axis=1)).mean()
    assert COMMON_AUGMENT.degrade == 0
    args = parse_args(
        [
            "--method",
            "dcl",
            "--data",
            str(tmp_path),
            "--output",
            str(tmp_path),
            "--degrade",
            "0.4",
            "--backbone",
            "mobilenetv2_100",
        ]
    )
    assert method_class("dcl")(args).training_augmentation().degrade == 0.4


def test_pcl_volume_loss_skips_dataset_fakes_without_a_mask() -> None:
    from training.methods.pcl_i2g import volume_loss

    torch.manual_seed(0)
    logits = torch.randn(3, 16, 16, 16, 16)
    masks = torch.zeros(3, 64, 64)
    masks[1, :, :32] = 1.0  # a blend: half forged
    masks[2] = 1.0  # a dataset fake's stand-in mask
    known = torch.tensor([True, True, False])
    only_known = volume_loss(logits[:2], masks[:2], None)
    assert torch.allclose(volume_loss(logits, masks, known), only_known)
    # the stand-in changes nothing however wrong the volume is on it
    logits[2] = -50.0
    assert torch.allclose(volume_loss(logits, masks, known), only_known)
    assert volume_loss(logits, masks, torch.zeros(3, dtype=torch.bool)) == 0


def test_frame_dataset_marks_dataset_fake_masks_as_unknown(crops_dataset: Path) -> None:
    from training.data import FrameDataset, load_index

    records = load_index(crops_dataset)
    spec = get_spec("pcl_i2g")
    dataset = FrameDataset(records, spec, frames_per_track=2)
    for index in range(len(dataset)):
        sample = dataset[index]
        assert bool(sample.extra["mask_known"]) == (sample.label == 0)


@pytest.mark.parametrize("bf16_units", [True, False])
def test_autocast_auto_is_bf16_only_on_a_cpu_with_bf16_units(monkeypatch: pytest.MonkeyPatch, bf16_units: bool) -> None:
    import training.loop
    from training.loop import _amp_dtype

    monkeypatch.setattr(training.loop, "cpu_has_bf16_units", lambda: bf16_units)
    cpu = torch.device("cpu")
    assert _amp_dtype("auto", cpu) == (torch.bfloat16 if bf16_units else None)
    assert _amp_dtype("none", cpu) is None
    assert _amp_dtype("bf16", cpu) == torch.bfloat16
    assert _amp_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        _amp_dtype("fp16", cpu)


def test_cpu_bf16_units_are_read_from_the_kernels_flags() -> None:
    from pathlib import Path

    from training.loop import cpu_has_bf16_units

    flags = Path("/proc/cpuinfo").read_text().split()
    assert cpu_has_bf16_units() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_the_default_bundle_recipe_trains_in_fp32_as_the_bundle_was() -> None:
    """--amp auto would train in bf16 on a CPU with bf16 units: the recipe pins what made the bundle."""
    from pathlib import Path

    recipe = (Path(__file__).resolve().parents[2] / "training" / "recipes" / "default_bundle.sh").read_text()
    commands = recipe.split("python -m training.train")[1:]
    assert len(commands) == 5
    for command in commands:
        call = command.split("\nfi")[0]
        assert "--amp none" in call or '"${COMMON[@]}"' in call, call
    assert "--amp none" in recipe.split("COMMON=(")[1].split(")")[0]
