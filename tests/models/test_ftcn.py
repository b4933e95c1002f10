"""FTCN: the official ftcn_tt.pth key layout loads, the sigmoid is applied exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import create_model
from models.registry import CheckpointError


def official_keys() -> set[str]:
    """Parameter/buffer names of ftcn_tt.pth, written from the reference's naming rules (METHODS.md)."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = {"resnet.s1.pathway0_stem.conv.weight"} | {f"resnet.s1.pathway0_stem.bn.0.{p}" for p in bn}
    for stage, blocks in ((2, 3), (3, 4), (4, 6)):
        for i in range(blocks):
            prefix = f"resnet.s{stage}.pathway0_res{i}"
            strided = stage > 2 and i == 0  # spatial stride became conv + BN + max-pool: BN nested at .0
            for conv in ("a", "b", "c"):
                keys.add(f"{prefix}.branch2.{conv}.weight")
                nested = ".0" if (conv == "b" and strided) else ""
                keys |= {f"{prefix}.branch2.{conv}_bn{nested}.{p}" for p in bn}
            if i == 0:
                keys.add(f"{prefix}.branch1.weight")
                keys |= {f"{prefix}.branch1_bn{'.0' if strided else ''}.{p}" for p in bn}
    head = "resnet.head.time_T"
    keys |= {f"{head}.pos_embedding", f"{head}.cls_token"}
    layer = f"{head}.transformer.layers.0"
    keys |= {f"{layer}.0.fn.norm.weight", f"{layer}.0.fn.norm.bias", f"{layer}.0.fn.fn.to_qkv.weight",
             f"{layer}.0.fn.fn.to_out.0.weight", f"{layer}.0.fn.fn.to_out.0.bias",
             f"{layer}.1.fn.norm.weight", f"{layer}.1.fn.norm.bias"}
    keys |= {f"{layer}.1.fn.fn.net.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")}
    keys |= {f"{head}.mlp_head.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    return keys


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("ftcn")


def test_size_and_key_layout(model: torch.nn.Module) -> None:
    assert sum(p.numel() for p in model.parameters()) == 14_765_889
    assert set(model.state_dict()) == official_keys()
    assert len(official_keys()) == 275


def test_official_layout_loads_and_sigmoid_is_applied_once(model: torch.nn.Module, tmp_path: Path) -> None:
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    state["module.resnet.head.time_T.mlp_head.1.weight"].zero_()
    state["module.resnet.head.time_T.mlp_head.1.bias"].fill_(1.25)
    path = tmp_path / "ftcn_tt.pth"
    torch.save(state, path)
    loaded = create_model("ftcn", checkpoint=path)
    clip = torch.randn(2, 3, 32, 224, 224)
    with torch.inference_mode():
        logits = loaded(clip)
    assert logits.shape == (2,)
    # the network returns the logit; P(fake) = sigmoid(logit) is applied once, downstream
    torch.testing.assert_close(logits, torch.full((2,), 1.25))


def test_wrong_checkpoints_name_the_keys(model: torch.nn.Module, tmp_path: Path) -> None:
    state = dict(model.state_dict())
    del state["resnet.s3.pathway0_res0.branch2.b_bn.0.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"s3\.pathway0_res0\.branch2\.b_bn\.0\.weight"):
        create_model("ftcn", checkpoint=tmp_path / "missing.pth")
    state = dict(model.state_dict())
    state["resnet.head.time_T.pos_embedding"] = torch.zeros(1, 9, 1024)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"pos_embedding: \(1, 9, 1024\) vs \(1, 17, 1024\)"):
        create_model("ftcn", checkpoint=tmp_path / "shape.pth")
