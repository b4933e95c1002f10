"""ImageNet initialisation from local files: torchvision's layout mapped onto timm's encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision

from models.backbones import load_backbone_weights
from models.dcl import DCL_SPEC, dcl_spec
from models.registry import CheckpointError, create_model, get_spec
from models.spec import IMAGENET_MEAN, IMAGENET_STD


def test_torchvision_mobilenet_v2_weights_give_torchvision_features(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2().eval()
    with torch.no_grad():  # non-trivial BN statistics, so a mis-mapped running_mean would show
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(reference.state_dict(), path)

    encoder = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=0, global_pool="").eval()
    load_backbone_weights(encoder, path)
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = reference.features(images)
        got = encoder.forward_features(images)
    assert got.shape == expected.shape == (2, 1280, 3, 3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_timm_layout_loads_by_name_and_wrong_architecture_is_refused(tmp_path: Path) -> None:
    source = timm.create_model("mobilenetv2_100", pretrained=False)
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    encoder = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=0, global_pool="")
    load_backbone_weights(encoder, path)
    torch.testing.assert_close(encoder.conv_stem.weight, source.conv_stem.weight)

    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    with pytest.raises(CheckpointError, match="backbone weights"):
        load_backbone_weights(encoder, resnet)


def test_dcl_spec_follows_the_backbone() -> None:
    assert dcl_spec() is DCL_SPEC and DCL_SPEC.input_size == 299
    small = get_spec("dcl", backbone="mobilenetv2_100")
    assert small.input_size == 224 and small.mean == IMAGENET_MEAN and small.std == IMAGENET_STD
    assert small.crop == DCL_SPEC.crop
    model = create_model("dcl", backbone="mobilenetv2_100")
    assert model.spec == small
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2,)
