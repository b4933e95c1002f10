"""The four frame detectors: shapes, label conventions, reference checkpoint layouts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from models import create_model
from models.registry import CheckpointError


def inputs(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, 3, model.spec.input_size, model.spec.input_size)


SMALL = {"pcl_i2g": {}, "dcl": {"backbone": "tf_efficientnet_b0"}, "lib": {"backbone": "mobilenet"}, "advgame": {"variant": "b0"}}


@pytest.mark.parametrize("name", ["pcl_i2g", "dcl", "lib", "advgame"])
def test_default_forward_gives_a_probability_per_image(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    with torch.inference_mode():
        logits = model(inputs(model, 2))
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    probs = torch.sigmoid(logits)
    assert ((probs >= 0) & (probs <= 1)).all()


def test_parameter_counts_match_the_references() -> None:
    counts = {name: sum(p.numel() for p in create_model(name).parameters()) for name in ("pcl_i2g", "lib", "advgame")}
    assert counts["pcl_i2g"] == pytest.approx(21.42e6, rel=0.01)  # ResNet-34 + convout + PCL head
    assert counts["lib"] == pytest.approx(88.0e6, rel=0.01)  # 4 x ResNet-34 + heads
    assert counts["advgame"] == pytest.approx(63.8e6, rel=0.01)  # EfficientNet-B7 + fc


def round_trip(name: str, reference: dict, tmp_path: Path, model: torch.nn.Module, **kwargs: object) -> torch.nn.Module:
    path = tmp_path / f"{name}_reference.pth"
    torch.save(reference, path)
    loaded = create_model(name, checkpoint=path, **kwargs)
    x = inputs(model)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    return loaded


def test_pcl_reference_layout_and_label_order(tmp_path: Path) -> None:
    model = create_model("pcl_i2g")
    state = model.state_dict()
    net_d = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    net_d.update({k: v for k, v in state.items() if k.startswith("convout.")})
    net_pcl = {k[len("pcl."):]: v for k, v in state.items() if k.startswith("pcl.")}
    assert "conv1.weight" in net_d and "layer4.2.bn2.running_var" in net_d and set(net_pcl) >= {"theta.weight", "phi.bias"}
    loaded = round_trip("pcl_i2g", {"net_D": net_d, "net_PCL": net_pcl}, tmp_path, model)
    with torch.no_grad():  # reference channel 0 = fake: make it win everywhere
        loaded.convout.weight.zero_()
        loaded.convout.bias.copy_(torch.tensor([8.0, -8.0]))
        assert torch.sigmoid(loaded(inputs(loaded))).min() > 0.99
    del net_d["layer2.0.conv1.weight"]
    torch.save({"net_D": net_d, "net_PCL": net_pcl}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"backbone\.layer2\.0\.conv1\.weight"):
        create_model("pcl_i2g", checkpoint=tmp_path / "broken.pth")


def test_dcl_query_encoder_layout_and_label_order(tmp_path: Path) -> None:
    model = create_model("dcl", **SMALL["dcl"])
    reference = {}
    for key, value in model.state_dict().items():
        reference[f"module.encoder_q.{key}"] = value
        reference[f"module.encoder_k.{key}"] = torch.zeros_like(value)  # the EMA key encoder is dropped
    reference["module.encoder_q.encoder.classifier.weight"] = torch.zeros(1000, 1280)  # timm's unused head
    reference["module.queue"] = torch.zeros(100, 16)
    loaded = round_trip("dcl", {"state_dict": {k: v for k, v in reference.items() if "queue" not in k}}, tmp_path, model, **SMALL["dcl"])
    with torch.no_grad():  # reference: P(fake) = 1 - softmax[:, 0], so class 1 is fake
        loaded.fc.weight.zero_()
        loaded.fc.bias.copy_(torch.tensor([-6.0, 6.0]))
        assert torch.sigmoid(loaded(inputs(loaded))).min() > 0.99


def test_lib_reference_layout(tmp_path: Path) -> None:
    model = create_model("lib", **SMALL["lib"])
    keys = set(model.state_dict())
    for expected in ("region_model1.conv_stem.weight", "region_model4.conv_head.weight", "local_linear4.weight",
                     "bottleneck.model.8.weight", "baseline_linear.bias", "linear.1.weight"):
        assert expected in keys
    loaded = round_trip("lib", {f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path, model, **SMALL["lib"])
    with torch.no_grad():  # label 1 = fake
        loaded.linear[1].weight.zero_()
        loaded.linear[1].bias.copy_(torch.tensor([-6.0, 6.0]))
        assert torch.sigmoid(loaded(inputs(loaded))).min() > 0.99


def test_lib_resnet_keys_are_torchvision_names() -> None:
    keys = set(create_model("lib").state_dict())
    assert {"region_model1.conv1.weight", "region_model2.layer4.2.bn2.bias", "local_linear1.weight"} <= keys
    assert create_model("lib").local_linear1.in_features == 1536


def to_efficientnet_pytorch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our timm keys written as the reference's EfficientNet-PyTorch keys (an independent mapping)."""
    flat_index = {}
    for stage_index, stage in enumerate(model.feature_model.blocks):
        for j in range(len(stage)):
            flat_index[(stage_index, j)] = len(flat_index)
    names_first_stage = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "se.conv_reduce": "_se_reduce",
                         "se.conv_expand": "_se_expand", "conv_pw": "_project_conv", "bn2": "_bn2"}
    names_later = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
                   "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand", "conv_pwl": "_project_conv", "bn3": "_bn2"}
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1"}
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("fc."):
            out["_fc." + key[3:]] = value
            continue
        match = re.fullmatch(r"feature_model\.blocks\.(\d+)\.(\d+)\.(se\.conv_\w+|\w+)\.(\w+)", key)
        if match:
            stage, j, part, leaf = int(match.group(1)), int(match.group(2)), match.group(3), match.group(4)
            table = names_first_stage if stage == 0 else names_later
            out[f"feature_model._blocks.{flat_index[(stage, j)]}.{table[part]}.{leaf}"] = value
            continue
        module, leaf = key[len("feature_model."):].split(".", 1)
        out[f"feature_model.{top[module]}.{leaf}"] = value
    return out


def test_advgame_efficientnet_pytorch_layout_and_label_order(tmp_path: Path) -> None:
    model = create_model("advgame", **SMALL["advgame"])
    reference = to_efficientnet_pytorch(model)
    assert "feature_model._blocks.0._depthwise_conv.weight" in reference
    assert "feature_model._blocks.15._expand_conv.weight" in reference and "_fc.weight" in reference
    loaded = round_trip("advgame", {"state": {f"module.{k}": v for k, v in reference.items()}}, tmp_path, model, **SMALL["advgame"])
    with torch.no_grad():  # reference: 0 = FAKE, 1 = REAL
        loaded.fc.weight.zero_()
        loaded.fc.bias.copy_(torch.tensor([6.0, -6.0]))
        assert torch.sigmoid(loaded(inputs(loaded))).min() > 0.99
    reference["feature_model._blocks.3._bogus.weight"] = torch.zeros(1)
    torch.save(reference, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="_bogus"):
        create_model("advgame", checkpoint=tmp_path / "bad.pth", **SMALL["advgame"])


def test_blur_generator_and_per_pixel_blur() -> None:
    from models.advgame import BlurGenerator, per_pixel_blur

    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    strength = BlurGenerator()(images)
    assert strength.shape == (2, 1, 32, 32) and strength.min() >= 1.0
    sharp = per_pixel_blur(images, torch.full((2, 1, 32, 32), 1e6))
    torch.testing.assert_close(sharp, images)  # huge s: the centre weight is all
    soft = per_pixel_blur(images, torch.ones(2, 1, 32, 32))
    assert soft.std() < images.std()  # s = 1 smooths
    flat = torch.full_like(images, 0.3)
    torch.testing.assert_close(per_pixel_blur(flat, strength), flat)  # weights are normalised
