"""Reference checkpoints of every architecture variant export: the variant is read from the tensors.

A reference checkpoint is a bare state_dict; export used to build the default network (advgame's
B7) and then refuse a B3's weights. Each test here builds the reference layout itself — our model
of that variant, its state_dict renamed into the reference's keys by a small inverse mapping
written independently of the models' filters — and checks what export infers. Variants with many
weights (B5, B7, LIB's four ResNet-34s, DCL's B4) are checked on meta-device state_dicts, which
carry the shapes inference reads and no storage; smaller ones go through a real export, whose ONNX
must reproduce the original module.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from export.__main__ import ExportError, export_model, main
from export.manifest import Manifest
from export.options import guess_value, parse_model_options
from models import create_model
from models.advgame import VARIANTS
from models.dcl import KNOWN_BACKBONES
from models.lib import BACKBONES as LIB_BACKBONES
from models.pcl_i2g import BACKBONES as PCL_BACKBONES
from models.registry import KwargsInferenceError, StateDict, resolve_model_kwargs

# ---- inverse mappings: our keys -> the reference implementations' ---------------------------------

#: timm EfficientNet -> EfficientNet-PyTorch (lukemelas; ``ForensicNet.feature_model``)
_EFFNET_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1"}
_EFFNET_FIRST_STAGE = {
    "conv_dw": "_depthwise_conv",
    "bn1": "_bn1",
    "se.conv_reduce": "_se_reduce",
    "se.conv_expand": "_se_expand",
    "conv_pw": "_project_conv",
    "bn2": "_bn2",
}
_EFFNET_EXPANDING = {
    "conv_pw": "_expand_conv",
    "bn1": "_bn0",
    "conv_dw": "_depthwise_conv",
    "bn2": "_bn1",
    "se.conv_reduce": "_se_reduce",
    "se.conv_expand": "_se_expand",
    "conv_pwl": "_project_conv",
    "bn3": "_bn2",
}
#: timm MobileNetV1 block -> LIB reference ``conv_dw()`` Sequential indices
_MOBILENET_LAYERS = {"conv_dw": 0, "bn1": 1, "conv_pw": 3, "bn2": 4}


def _block_positions(state: StateDict, prefix: str) -> list[tuple[int, int]]:
    """timm's ``blocks.{stage}.{j}`` in flat order (what the references number 0, 1, 2, ...)."""
    pattern = re.compile(re.escape(prefix) + r"blocks\.(\d+)\.(\d+)\.")
    return sorted({(int(m.group(1)), int(m.group(2))) for k in state if (m := pattern.match(k))})


def advgame_reference(state: StateDict) -> StateDict:
    """Our AdvGameDetector keys -> the reference ``ForensicNet``'s (flat ``_blocks.{i}``, head ``_fc``)."""
    positions = _block_positions(state, "feature_model.")
    index = {p: i for i, p in enumerate(positions)}
    out: StateDict = {}
    for key, value in state.items():
        module, leaf = key.rsplit(".", 1)
        if module == "fc":
            out[f"_fc.{leaf}"] = value
            continue
        block = re.fullmatch(r"feature_model\.blocks\.(\d+)\.(\d+)\.(.+)", module)
        if block:
            stage, j, part = int(block.group(1)), int(block.group(2)), block.group(3)
            expanding = f"feature_model.blocks.{stage}.{j}.conv_pwl.weight" in state
            table = _EFFNET_EXPANDING if expanding else _EFFNET_FIRST_STAGE
            out[f"feature_model._blocks.{index[(stage, j)]}.{table[part]}.{leaf}"] = value
        else:
            out[f"feature_model.{_EFFNET_TOP[module.removeprefix('feature_model.')]}.{leaf}"] = value
    return out


def lib_reference(state: StateDict, backbone: str) -> StateDict:
    """Our LIB keys -> ``MI_Net``'s: ResNet-34 names are shared; MobileNetV1 is ``model.{i}.{layer}``
    plus the reference's unused ``fc`` in every region model."""
    if backbone != "mobilenet":
        return dict(state)
    out: StateDict = {}
    regions = sorted({m.group(1) for k in state if (m := re.match(r"(region_model\d+)\.", k))})
    for region in regions:
        index = {p: i + 1 for i, p in enumerate(_block_positions(state, f"{region}."))}
        for key, value in state.items():
            if not key.startswith(f"{region}."):
                continue
            module, leaf = key.removeprefix(f"{region}.").rsplit(".", 1)
            if module in ("conv_stem", "bn1"):
                out[f"{region}.model.0.{0 if module == 'conv_stem' else 1}.{leaf}"] = value
            else:
                stage, j, part = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(\w+)", module).groups()
                out[f"{region}.model.{index[(int(stage), int(j))]}.{_MOBILENET_LAYERS[part]}.{leaf}"] = value
        width = state[f"{region}.blocks.4.1.conv_pw.weight"].shape[0]
        device = state[f"{region}.conv_stem.weight"].device
        out[f"{region}.fc.weight"] = torch.zeros(1000, width, device=device)
        out[f"{region}.fc.bias"] = torch.zeros(1000, device=device)
    out.update({k: v for k, v in state.items() if not k.startswith("region_model")})
    return out


def dcl_reference(state: StateDict) -> dict[str, Any]:
    """Our DCL keys -> TFace's ``DCL`` checkpoint: MoCo pair, the timm classifier it never calls, queues."""
    width = state["fc.weight"].shape[1]
    device = state["fc.weight"].device
    encoder = {
        **state,
        "encoder.classifier.weight": torch.zeros(1000, width, device=device),
        "encoder.classifier.bias": torch.zeros(1000, device=device),
    }
    weights = {f"encoder_q.{k}": v for k, v in encoder.items()}
    weights.update({f"encoder_k.{k}": v.clone() for k, v in encoder.items()})
    weights.update({"queue": torch.zeros(2, 16, 100, device=device), "prototypes": torch.zeros(2, 100, device=device)})
    return {"state_dict": weights, "epoch": 5}


def pcl_reference(state: StateDict) -> dict[str, StateDict]:
    """Our PCLI2G keys -> the reference's two nets (``net_D``: ResNet + ``convout``; ``net_PCL``)."""
    net_d = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("pcl.")}
    net_pcl = {k.removeprefix("pcl."): v for k, v in state.items() if k.startswith("pcl.")}
    return {"net_D": net_d, "net_PCL": net_pcl}


# ---- inference from the tensors (meta device: shapes only, any size of network) ---------------


def meta_state(name: str, **kwargs: Any) -> StateDict:
    with torch.device("meta"):
        return create_model(name, **kwargs).state_dict()


def inferred(name: str, checkpoint: dict[str, Any], options: dict[str, Any] | None = None) -> dict[str, Any]:
    chosen = resolve_model_kwargs(name, checkpoint, options)
    assert all(chosen.origin[k] == ("option" if k in (options or {}) else "inferred") for k in chosen.kwargs)
    return chosen.kwargs


@pytest.mark.parametrize("layout", ["reference", "timm"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_advgame_variant_is_read_from_the_tensors(variant: str, layout: str) -> None:
    state = meta_state("advgame", variant=variant)
    if layout == "reference":
        state = {f"module.{k}": v for k, v in advgame_reference(state).items()}
    assert inferred("advgame", {"state_dict": state}) == {"variant": variant}


@pytest.mark.parametrize("backbone", list(LIB_BACKBONES))
def test_lib_backbone_and_number_of_regions_are_read_from_the_tensors(backbone: str) -> None:
    for regions in (4, 2):
        state = lib_reference(meta_state("lib", backbone=backbone, num_regions=regions), backbone)
        assert inferred("lib", {"state_dict": state, "epoch": 3}) == {"num_regions": regions, "backbone": backbone}
    # an explicit num_regions is used to build the candidates, and is not reported as inferred
    assert inferred("lib", {"state_dict": state}, {"num_regions": 2}) == {"backbone": backbone, "num_regions": 2}


@pytest.mark.parametrize("backbone", list(KNOWN_BACKBONES))
def test_dcl_backbone_is_read_from_the_tensors(backbone: str) -> None:
    assert inferred("dcl", dcl_reference(meta_state("dcl", backbone=backbone))) == {"backbone": backbone}


@pytest.mark.parametrize("backbone", list(PCL_BACKBONES))
def test_pcl_i2g_backbone_is_read_from_the_tensors(backbone: str) -> None:
    reference = pcl_reference(meta_state("pcl_i2g", backbone=backbone))
    assert inferred("pcl_i2g", {"state_dict": reference}) == {"backbone": backbone}
    assert inferred("pcl_i2g", {"state_dict": reference["net_D"]}) == {"backbone": backbone}


def test_an_explicit_option_wins_and_our_checkpoints_keep_their_own_kwargs() -> None:
    b0 = advgame_reference(meta_state("advgame", variant="b0"))
    assert inferred("advgame", {"state_dict": b0}, {"variant": "b3"}) == {"variant": "b3"}
    assert inferred("advgame", {"state_dict": b0}, {"dropout": 0.1}) == {"variant": "b0", "dropout": 0.1}
    ours = resolve_model_kwargs("dcl", {"model": "dcl", "model_kwargs": {"backbone": "resnet18"}, "state_dict": {}})
    assert ours.kwargs == {"backbone": "resnet18"} and ours.origin == {"backbone": "checkpoint"}


def test_a_checkpoint_that_fits_no_variant_names_the_option_to_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = advgame_reference(meta_state("advgame", variant="b0"))
    state["_fc.weight"] = torch.zeros(5, 1280)  # the reference's --multi 5-class head
    with pytest.raises(KwargsInferenceError, match=r"closest b0: 1 difference, e\.g\. fc\.weight: \(5, 1280\)"):
        resolve_model_kwargs("advgame", {"state_dict": state})

    junk = tmp_path / "junk.pth"
    torch.save({"something.weight": torch.zeros(3)}, junk)
    with pytest.raises(ExportError, match=r"pass --option variant=b7 \(one of b7, .*b0"):
        export_model("advgame", tmp_path / "repo", checkpoint=junk)
    assert main(["--model", "lib", "--checkpoint", str(junk), "--out", str(tmp_path / "repo")]) == 1
    assert "pass --option num_regions=" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


# ---- --option parsing --------------------------------------------------------------------------


def test_options_are_typed_by_the_constructor_and_unknown_keys_are_refused() -> None:
    assert parse_model_options("lib", ["backbone=mobilenet", "num_regions=2", "dropout=0.3"]) == {
        "backbone": "mobilenet",
        "num_regions": 2,
        "dropout": 0.3,
    }
    assert parse_model_options("advgame", ["variant=b3", "dropout=1"]) == {"variant": "b3", "dropout": 1.0}
    assert parse_model_options("advgame", None) == {}
    with pytest.raises(ValueError, match=r"advgame takes no option 'varient'; allowed: variant, dropout"):
        parse_model_options("advgame", ["varient=b3"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_options("advgame", ["b3"])
    with pytest.raises(ValueError, match="num_regions takes int"):
        parse_model_options("lib", ["num_regions=two"])
    assert [guess_value(v) for v in ("true", "False", "3", "0.5", "none", "b3")] == [True, False, 3, 0.5, None, "b3"]


# ---- real exports: the engine reproduces the module the reference file was made from ----------


def _vary_statistics(model: nn.Module, seed: int) -> nn.Module:
    """Random BN statistics and affine terms, so a tensor loaded into the wrong place changes the
    logits (freshly initialised BNs are identities that would hide it)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.rand(size, generator=generator) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(size, generator=generator) * 0.2 - 0.1)
    return model.eval()


def assert_engine_reproduces(folder: Path, original: nn.Module, kwargs: dict[str, Any]) -> None:
    """The manifest records ``kwargs``, export's parity check passed, and onnxruntime gives the
    original module's logits on a fresh input."""
    import onnxruntime as ort

    manifest = Manifest.read(folder)
    assert manifest.source.model_kwargs == kwargs
    assert manifest.source.layout == "reference" and not manifest.untrained
    assert manifest.parity is not None and manifest.parity.max_abs_diff_prob <= manifest.parity.tolerance_prob
    images = torch.randn(manifest.model_spec().input_shape(2), generator=torch.Generator().manual_seed(7))
    session = ort.InferenceSession(str(folder / manifest.file), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {manifest.inputs[0].name: images.numpy()})
    with torch.inference_mode():
        expected = original(images).numpy()
    assert abs(expected[0] - expected[1]) > 1e-6, "the logits should depend on the input"
    np.testing.assert_allclose(np.asarray(got).reshape(-1), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_reference_advgame_b3_exports_through_the_cli(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: ``ah651/deepfake_adv``'s ``{"state": ForensicNet.state_dict(), "epoch"}``, B3."""
    torch.manual_seed(0)
    original = _vary_statistics(create_model("advgame", variant="b3"), seed=1)
    checkpoint = tmp_path / "adv_b3.pth"
    torch.save({"state": advgame_reference(original.state_dict()), "epoch": 20}, checkpoint)
    with caplog.at_level(logging.INFO, logger="export"):
        code = main(
            [
                "--model",
                "advgame",
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(tmp_path / "repo"),
                "--option",
                "dropout=0.3",
            ]
        )
    assert code == 0
    assert "variant='b3' (inferred), dropout=0.3 (option)" in caplog.text
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert_engine_reproduces(folder, original, {"variant": "b3", "dropout": 0.3})


@pytest.mark.slow
def test_reference_lib_mobilenet_with_two_regions_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = _vary_statistics(create_model("lib", backbone="mobilenet", num_regions=2), seed=2)
    checkpoint = tmp_path / "lib_mobilenet.pth"
    torch.save({"state_dict": lib_reference(original.state_dict(), "mobilenet"), "epoch": 9}, checkpoint)
    folder = export_model("lib", tmp_path / "repo", checkpoint=checkpoint, parity_batches=[1])
    assert_engine_reproduces(folder, original, {"num_regions": 2, "backbone": "mobilenet"})


@pytest.mark.slow
def test_reference_dcl_mobilenet_exports_at_its_own_input_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = _vary_statistics(create_model("dcl", backbone="mobilenetv2_100"), seed=3)
    checkpoint = tmp_path / "dcl.pth"
    torch.save(dcl_reference(original.state_dict()), checkpoint)
    folder = export_model("dcl", tmp_path / "repo", checkpoint=checkpoint, parity_batches=[1])
    assert Manifest.read(folder).spec["input_size"] == 224
    assert_engine_reproduces(folder, original, {"backbone": "mobilenetv2_100"})


@pytest.mark.slow
def test_reference_pcl_i2g_resnet18_net_d_exports(tmp_path: Path) -> None:
    """A bare ``net_D`` saved from DataParallel (``module.``-prefixed), as patch-forensics trains."""
    torch.manual_seed(0)
    original = _vary_statistics(create_model("pcl_i2g", backbone="resnet18"), seed=4)
    checkpoint = tmp_path / "latest_net_D.pth"
    net_d = pcl_reference(original.state_dict())["net_D"]
    torch.save({f"module.{k}": v for k, v in net_d.items()}, checkpoint)
    folder = export_model("pcl_i2g", tmp_path / "repo", checkpoint=checkpoint, parity_batches=[1])
    assert_engine_reproduces(folder, original, {"backbone": "resnet18"})
