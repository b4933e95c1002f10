"""The four frame detectors: shapes, label conventions, reference checkpoint layouts, ONNX parity.

Reference layouts are written here from the references' naming rules (an independent mapping
from our keys), never through the modules' own filters, so a wrong filter fails these tests.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from models import create_model, get_spec
from models.registry import CheckpointError
from tests.models.batchnorm import randomize_batchnorm

NAMES = ["pcl_i2g", "dcl", "lib", "advgame"]
#: the smallest configuration of each detector, for the slower checks
SMALL: dict[str, dict[str, str]] = {
    "pcl_i2g": {},
    "dcl": {"backbone": "tf_efficientnet_b0"},
    "lib": {"backbone": "mobilenet"},
    "advgame": {"variant": "b0"},
}


def inputs(model: nn.Module, batch: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, model.spec.input_size, model.spec.input_size, generator=generator)


@pytest.fixture(scope="module")
def default() -> dict[str, nn.Module]:
    """Default configurations, built on first use and shared (B7 and 4 x ResNet-34 are slow to build)."""

    class Lazy(dict):
        def __missing__(self, name: str) -> nn.Module:
            torch.manual_seed(0)
            self[name] = create_model(name)
            return self[name]

    return Lazy()


@pytest.fixture(scope="module")
def small() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: randomize_batchnorm(create_model(name, **kwargs)) for name, kwargs in SMALL.items()}


def assert_loads_equal(name: str, reference: dict, tmp_path: Path, model: nn.Module, **kwargs: str) -> nn.Module:
    """Save ``reference`` as a file, load it through the registry, compare outputs with ``model``."""
    path = tmp_path / f"{name}_reference.pth"
    torch.save(reference, path)
    loaded = create_model(name, checkpoint=path, **kwargs)
    x = inputs(model)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=1e-6)
    return loaded


def expect_error(name: str, reference: dict, tmp_path: Path, pattern: str, **kwargs: str) -> None:
    torch.save(reference, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=pattern):
        create_model(name, checkpoint=tmp_path / "broken.pth", **kwargs)


# ---- every detector ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_default_forward_gives_a_probability_per_image(name: str, default: dict[str, nn.Module]) -> None:
    model = default[name]
    assert not model.training  # create_model hands back an inference-ready net
    with torch.inference_mode():
        logits = model(inputs(model, 2))
    assert logits.shape == (2,) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    probs = torch.sigmoid(logits)
    assert ((probs >= 0) & (probs <= 1)).all()


def test_parameter_counts_match_the_references(default: dict[str, nn.Module]) -> None:
    def count(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    assert count(default["pcl_i2g"]) == pytest.approx(21.42e6, rel=0.005)  # ResNet-34 + convout + PCL head
    assert count(default["lib"]) == pytest.approx(88.0e6, rel=0.005)  # 4 x ResNet-34 + heads
    assert count(default["advgame"]) == pytest.approx(63.8e6, rel=0.005)  # EfficientNet-B7 + fc
    # The references also build classifiers they never call (timm's 1000-way head in DCL, an
    # fc(1024, 1000) per MobileNetV1 in LIB); their published sizes include them, ours drop them.
    assert count(default["dcl"]) + 1792 * 1000 + 1000 == pytest.approx(19.4e6, rel=0.005)
    lib_mobilenet = create_model("lib", backbone="mobilenet")
    assert count(lib_mobilenet) + 4 * (1024 * 1000 + 1000) == pytest.approx(22.1e6, rel=0.005)


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_torch_for_dynamic_batch(name: str, small: dict[str, nn.Module], tmp_path: Path) -> None:
    from export.onnx_export import export_onnx, measure_parity

    model = small[name]
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, model.spec, path)
    parity = measure_parity(model, model.spec, path, batch_sizes=[1, 7])
    assert parity.batch_sizes == [1, 7]
    assert parity.max_abs_diff_logit < 1e-4


# ---- PCL-I2G -------------------------------------------------------------------------------------


def pcl_reference_nets(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``net_D`` (CustomResNet: torchvision names + convout) and ``net_PCL`` (theta, phi) state dicts."""
    net_d, net_pcl = {}, {}
    for key, value in model.state_dict().items():
        if key.startswith("backbone."):
            net_d[key.removeprefix("backbone.")] = value.clone()
        elif key.startswith("convout."):
            net_d[key] = value.clone()
        elif key.startswith("pcl."):
            net_pcl[key.removeprefix("pcl.")] = value.clone()
    return net_d, net_pcl


def test_pcl_reference_files_load(small: dict[str, nn.Module], tmp_path: Path) -> None:
    model = small["pcl_i2g"]
    net_d, net_pcl = pcl_reference_nets(model)
    assert net_d["convout.weight"].shape == (2, 512, 1, 1) and "layer4.2.bn2.running_var" in net_d
    assert set(net_pcl) == {"theta.weight", "theta.bias", "phi.weight", "phi.bias"}
    # the reference's own file: {epoch}_net_D.pth = {"state_dict", "optimizer", "scheduler", "epoch", ...}
    assert_loads_equal("pcl_i2g", {"state_dict": net_d, "optimizer": {}, "epoch": 5}, tmp_path, model)
    # both nets in one dict (either as state dicts or as the reference's whole files)
    both = {"net_D": {"state_dict": net_d, "epoch": 5}, "net_PCL": {f"module.{k}": v for k, v in net_pcl.items()}}
    loaded = assert_loads_equal("pcl_i2g", both, tmp_path, model)
    x = inputs(model)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.forward_train(x)[1], model.forward_train(x)[1])
    del net_d["layer2.0.conv1.weight"]
    expect_error("pcl_i2g", {"state_dict": net_d}, tmp_path, r"missing 1 keys: backbone\.layer2\.0\.conv1\.weight")
    expect_error("pcl_i2g", {"net_G": net_pcl}, tmp_path, "net_G")


def test_pcl_score_is_the_patch_mean_of_fake_softmax_channel_0(small: dict[str, nn.Module]) -> None:
    model = small["pcl_i2g"]
    x = inputs(model)
    with torch.inference_mode():
        patch_logits, _ = model.forward_train(x)
        assert patch_logits.shape == (2, 2, 8, 8)
        expected = torch.softmax(patch_logits.double(), dim=1)[:, 0].mean(dim=(1, 2))
        torch.testing.assert_close(torch.sigmoid(model(x).double()), expected, rtol=0, atol=1e-6)
    saturated = create_model("pcl_i2g")
    with torch.no_grad():
        saturated.convout.weight.zero_()
        saturated.convout.bias.copy_(torch.tensor([60.0, -60.0]))  # reference channel 0 = fake
        logits = saturated(x)
    assert torch.isfinite(logits).all() and (torch.sigmoid(logits) > 0.99).all()
    torch.testing.assert_close(logits, torch.full((2,), -math.log(1e-6)), rtol=0, atol=1e-4)  # P(real) clamped
    with torch.no_grad():
        saturated.convout.bias.copy_(torch.tensor([-60.0, 60.0]))
        torch.testing.assert_close(saturated(x), torch.full((2,), math.log(1e-6)), rtol=0, atol=1e-4)


def test_pcl_consistency_volume_orientation(small: dict[str, nn.Module]) -> None:
    """volume[n, i, j, k, l] = sigmoid(theta(x)[n, :, k, l] . phi(x)[n, :, i, j] / 16), as the reference."""
    model = small["pcl_i2g"]
    features = torch.randn(2, 256, 16, 16)
    with torch.inference_mode():
        volume = model.pcl(features)
        theta, phi = model.pcl.theta(features), model.pcl.phi(features)
    expected = torch.sigmoid(torch.einsum("nckl,ncij->nijkl", theta, phi) / 16)
    torch.testing.assert_close(volume, expected)
    assert not torch.allclose(volume, volume.permute(0, 3, 4, 1, 2))  # the orientation matters
    with torch.inference_mode():
        _, full = model.forward_train(inputs(model))
    assert full.shape == (2, 16, 16, 16, 16) and ((full >= 0) & (full <= 1)).all()


# ---- DCL -----------------------------------------------------------------------------------------


def test_dcl_moco_checkpoint_loads_the_query_encoder(small: dict[str, nn.Module], tmp_path: Path) -> None:
    model = small["dcl"]
    state = {}
    for key, value in model.state_dict().items():
        state[f"module.encoder_q.{key}"] = value.clone()
        state[f"module.encoder_k.{key}"] = torch.randn_like(value.float()).to(value.dtype)  # EMA copy: dropped
    width = model.fc.in_features
    for encoder in ("encoder_q", "encoder_k"):  # timm's 1000-way head, built but never called
        state[f"module.{encoder}.encoder.classifier.weight"] = torch.randn(1000, width)
        state[f"module.{encoder}.encoder.classifier.bias"] = torch.randn(1000)
    state.update(
        {
            "module.real_queue": torch.randn(100),
            "module.ancor_queue": torch.randn(100),
            "module.hard_fake_queue": torch.randn(100, 64),
            "module.hard_real_queue": torch.randn(100, 64),
            "module.real_queue_ptr_hard": torch.zeros(1, dtype=torch.long),
            "module.fake_queue_ptr_hard": torch.zeros(1, dtype=torch.long),
        }
    )
    loaded = assert_loads_equal("dcl", {"state_dict": state, "epoch": 3}, tmp_path, model, **SMALL["dcl"])
    with torch.no_grad():  # the reference scores 1 - softmax[:, 0]: class 1 is fake
        loaded.fc.weight.zero_()
        loaded.fc.bias.copy_(torch.tensor([-6.0, 6.0]))
        assert (torch.sigmoid(loaded(inputs(loaded))) > 0.99).all()
        loaded.fc.bias.copy_(torch.tensor([6.0, -6.0]))
        assert (torch.sigmoid(loaded(inputs(loaded))) < 0.01).all()
    del state["module.encoder_q.feature_squeeze.weight"]
    expect_error("dcl", {"state_dict": state}, tmp_path, r"feature_squeeze\.weight", **SMALL["dcl"])


def test_dcl_logit_and_embedding(small: dict[str, nn.Module]) -> None:
    model = small["dcl"]
    x = inputs(model)
    with torch.inference_mode():
        logits, feature_map = model.forward_train(x)
        embedding = model.embedding(feature_map)
        expected = 1 - torch.softmax(logits.double(), dim=1)[:, 0]
        torch.testing.assert_close(torch.sigmoid(model(x).double()), expected)
    # input / stride 32 with "same" padding: the paper's 299 px gives 10 x 10 (a 100-d embedding);
    # the small stand-in backbone here takes its own ImageNet size (224 -> 7 x 7)
    side = math.ceil(model.spec.input_size / 32)
    assert math.ceil(299 / 32) == 10 and model.spec.input_size == get_spec("dcl", **SMALL["dcl"]).input_size
    assert feature_map.shape[-2:] == (side, side)
    assert embedding.shape == (2, side * side)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(2))


# ---- LIB -----------------------------------------------------------------------------------------


def test_lib_resnet_reference_layout(default: dict[str, nn.Module], tmp_path: Path) -> None:
    model = randomize_batchnorm(default["lib"])
    state = model.state_dict()
    # MI_Net names with torchvision ResNet-34 region models (fc removed) and 2048-d f_all
    for key in (
        "region_model1.conv1.weight",
        "region_model4.layer4.2.bn2.running_var",
        "region_model2.layer2.0.downsample.0.weight",
        "bottleneck.model.0.weight",
        "bottleneck.model.5.running_mean",
        "bottleneck.model.8.weight",
        "linear.1.weight",
    ):
        assert key in state
    assert state["baseline_linear.weight"].shape == (2, 2048) and state["local_linear3.weight"].shape == (2, 1536)
    assert state["bottleneck.model.8.weight"].shape == (512, 500)
    reference = {"state_dict": {f"module.{k}": v.clone() for k, v in state.items()}, "epoch": 10}
    loaded = assert_loads_equal("lib", reference, tmp_path, model)
    with torch.no_grad():  # label 1 = fake
        loaded.linear[1].weight.zero_()
        loaded.linear[1].bias.copy_(torch.tensor([-6.0, 6.0]))
        assert (torch.sigmoid(loaded(inputs(loaded))) > 0.99).all()
    del reference["state_dict"]["module.local_linear2.bias"]
    expect_error("lib", reference, tmp_path, r"local_linear2\.bias")


def to_reference_mobilenet_v1(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our LIB-MobileNet keys as the reference's ``MobileNetV1`` keys (``model.{k}.{i}``, plus ``fc``)."""
    out = {}
    flat: dict[tuple[int, int], int] = {}
    for stage_index, stage in enumerate(model.region_model1.blocks):
        for j in range(len(stage)):
            flat[(stage_index, j)] = len(flat) + 1
    layer_index = {"conv_dw": 0, "bn1": 1, "conv_pw": 3, "bn2": 4}
    for key, value in model.state_dict().items():
        match = re.fullmatch(r"(region_model\d)\.(.+)", key)
        if match is None:
            out[key] = value.clone()
            continue
        region, rest = match.groups()
        block = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(\w+)", rest)
        if block:
            stage, j, layer, leaf = int(block.group(1)), int(block.group(2)), block.group(3), block.group(4)
            out[f"{region}.model.{flat[(stage, j)]}.{layer_index[layer]}.{leaf}"] = value.clone()
        else:
            layer, leaf = rest.split(".", 1)
            out[f"{region}.model.0.{ {'conv_stem': 0, 'bn1': 1}[layer] }.{leaf}"] = value.clone()
    for i in range(1, 5):
        out[f"region_model{i}.fc.weight"] = torch.randn(1000, 1024)
        out[f"region_model{i}.fc.bias"] = torch.randn(1000)
    return out


class ReferenceMobileNetV1(nn.Module):
    """The reference LIB's MobileNetV1 structure: conv-BN-ReLU, 13 x (dw-BN-ReLU, pw-BN-ReLU), pool."""

    def __init__(self) -> None:
        super().__init__()
        plan = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]
        plan += [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
        layers = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())]
        for cin, cout, stride in plan:
            layers.append(
                nn.Sequential(
                    nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                    nn.BatchNorm2d(cin),
                    nn.ReLU(),
                    nn.Conv2d(cin, cout, 1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(),
                )
            )
        self.model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(1024, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).flatten(1)


def test_lib_mobilenet_reference_layout(small: dict[str, nn.Module], tmp_path: Path) -> None:
    model = small["lib"]
    reference = to_reference_mobilenet_v1(model)
    assert "region_model3.model.13.4.running_var" in reference and "region_model1.model.0.0.weight" in reference
    loaded = assert_loads_equal("lib", {"state_dict": reference}, tmp_path, model, **SMALL["lib"])
    # the network the reference builds computes the same features from those weights
    torch.manual_seed(3)
    mobilenet = randomize_batchnorm(ReferenceMobileNetV1(), seed=3)
    with torch.no_grad():  # large activations: ReLU and ReLU6 must not both pass
        for module in mobilenet.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.bias.add_(8.0)
    weights = {f"region_model2.{k}": v for k, v in mobilenet.state_dict().items()}
    reference.update(weights)
    loaded = create_model("lib", checkpoint={"state_dict": reference}, **SMALL["lib"])
    x = inputs(model)
    with torch.inference_mode():
        features = mobilenet(x)
        assert features.max() > 6
        torch.testing.assert_close(loaded.region_model2(x), features, rtol=1e-5, atol=1e-4)
    del reference["region_model4.model.7.3.weight"]
    expect_error(
        "lib", {"state_dict": reference}, tmp_path, r"region_model4\.blocks\.3\.1\.conv_pw\.weight", **SMALL["lib"]
    )
    expect_error("lib", {"state_dict": reference}, tmp_path, "backbone='mobilenet'")  # a ResNet LIB refuses it


def test_lib_heads_see_what_the_reference_feeds_them(small: dict[str, nn.Module]) -> None:
    model = small["lib"]
    x = inputs(model)
    with torch.inference_mode():
        before = model.forward_train(x)
        torch.testing.assert_close(model(x), before["p_y_given_z"][:, 1] - before["p_y_given_z"][:, 0])
        assert before["z"].shape == (2, 1024) and len(before["p_y_given_f_except_i"]) == 4
        original = model.region_model3.bn1.bias.clone()
        model.region_model3.bn1.bias.add_(1.0)  # change f_3 only
        after = model.forward_train(x)
        model.region_model3.bn1.bias.copy_(original)
    # local_linear3 sees every feature but f_3; the other heads all see f_3
    torch.testing.assert_close(after["p_y_given_f_except_i"][2], before["p_y_given_f_except_i"][2])
    for i in (0, 1, 3):
        assert not torch.allclose(after["p_y_given_f_except_i"][i], before["p_y_given_f_except_i"][i])
    assert not torch.allclose(after["p_y_given_f_all"], before["p_y_given_f_all"])


# ---- adversarial game ----------------------------------------------------------------------------


def to_efficientnet_pytorch(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our timm keys written as the reference's EfficientNet-PyTorch keys (an independent mapping)."""
    flat_index = {}
    for stage_index, stage in enumerate(model.feature_model.blocks):
        for j in range(len(stage)):
            flat_index[(stage_index, j)] = len(flat_index)
    names_first_stage = {
        "conv_dw": "_depthwise_conv",
        "bn1": "_bn1",
        "se.conv_reduce": "_se_reduce",
        "se.conv_expand": "_se_expand",
        "conv_pw": "_project_conv",
        "bn2": "_bn2",
    }
    names_later = {
        "conv_pw": "_expand_conv",
        "bn1": "_bn0",
        "conv_dw": "_depthwise_conv",
        "bn2": "_bn1",
        "se.conv_reduce": "_se_reduce",
        "se.conv_expand": "_se_expand",
        "conv_pwl": "_project_conv",
        "bn3": "_bn2",
    }
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1"}
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("fc."):
            out["_fc." + key[3:]] = value.clone()
            continue
        match = re.fullmatch(r"feature_model\.blocks\.(\d+)\.(\d+)\.(se\.conv_\w+|\w+)\.(\w+)", key)
        if match:
            stage, j, part, leaf = int(match.group(1)), int(match.group(2)), match.group(3), match.group(4)
            table = names_first_stage if stage == 0 else names_later
            out[f"feature_model._blocks.{flat_index[(stage, j)]}.{table[part]}.{leaf}"] = value.clone()
            continue
        module, leaf = key[len("feature_model.") :].split(".", 1)
        out[f"feature_model.{top[module]}.{leaf}"] = value.clone()
    return out


def test_advgame_efficientnet_pytorch_layout_and_label_order(small: dict[str, nn.Module], tmp_path: Path) -> None:
    model = small["advgame"]
    reference = to_efficientnet_pytorch(model)
    assert "feature_model._blocks.0._depthwise_conv.weight" in reference and "_fc.weight" in reference
    assert "feature_model._blocks.15._expand_conv.weight" in reference  # B0: 16 blocks, flat
    # EfficientNet-PyTorch sizes the SE squeeze from the block's input width: max(1, int(in * 0.25))
    in_width = reference["feature_model._blocks.1._expand_conv.weight"].shape[1]
    assert reference["feature_model._blocks.1._se_reduce.weight"].shape[0] == max(1, int(in_width * 0.25))
    saved = {"state": {f"module.{k}": v for k, v in reference.items()}, "epoch": 7}  # the reference's file
    loaded = assert_loads_equal("advgame", saved, tmp_path, model, **SMALL["advgame"])
    with torch.no_grad():  # reference: 0 = FAKE, 1 = REAL
        loaded.fc.weight.zero_()
        loaded.fc.bias.copy_(torch.tensor([6.0, -6.0]))
        assert (torch.sigmoid(loaded(inputs(loaded))) > 0.99).all()
    broken = dict(reference)
    del broken["feature_model._blocks.3._bn1.running_var"]
    expect_error(
        "advgame", {"state": broken}, tmp_path, r"feature_model\.blocks\.2\.0\.bn2\.running_var", **SMALL["advgame"]
    )
    broken = dict(reference, **{"feature_model._blocks.3._bogus.weight": torch.zeros(1)})
    expect_error("advgame", broken, tmp_path, "_bogus", **SMALL["advgame"])
    multi = dict(reference, **{"_fc.weight": torch.zeros(5, 1280), "_fc.bias": torch.zeros(5)})  # --multi
    expect_error("advgame", multi, tmp_path, r"fc\.weight: \(5, 1280\) vs \(2, 1280\)", **SMALL["advgame"])


def test_blur_generator_layout_and_range() -> None:
    from models.advgame import BlurGenerator

    torch.manual_seed(0)
    generator = BlurGenerator()
    state = generator.state_dict()
    assert state["model.1.weight"].shape == (64, 3, 7, 7) and "model.1.bias" not in state  # conv before BN
    assert state["model.10.conv_block.5.weight"].shape == (256, 256, 3, 3)
    assert state["model.13.weight"].shape == (256, 128, 3, 3)  # ConvTranspose 256 -> 128
    assert state["model.20.weight"].shape == (1, 64, 7, 7) and "model.20.bias" in state
    assert sum(p.numel() for p in generator.parameters()) == pytest.approx(4.3e6, rel=0.01)
    strength = generator(torch.rand(2, 3, 32, 32))
    assert strength.shape == (2, 1, 32, 32) and strength.min() >= 1.0 and strength.max() <= 1e12


def test_per_pixel_blur_is_the_normalised_3x3_gaussian_with_reflect_padding() -> None:
    from models.advgame import per_pixel_blur

    torch.manual_seed(0)
    images = torch.rand(2, 3, 9, 11)
    strength = torch.rand(2, 1, 9, 11) * 4 + 1
    padded = nn.functional.pad(images, (1, 1, 1, 1), mode="reflect")
    expected = torch.zeros_like(images)
    total = torch.zeros_like(strength)
    for a in range(3):
        for b in range(3):
            weight = torch.exp(-((a - 1) ** 2 + (b - 1) ** 2) / 2 * strength)
            expected += weight * padded[:, :, a : a + 9, b : b + 11]
            total += weight
    torch.testing.assert_close(per_pixel_blur(images, strength), expected / total)
    torch.testing.assert_close(per_pixel_blur(images, torch.full_like(strength, 1e6)), images)  # huge s: no blur
    flat = torch.full_like(images, 0.3)
    torch.testing.assert_close(per_pixel_blur(flat, strength), flat)  # weights sum to one
