"""FTCN: official ftcn_tt.pth layout, size, logit output (sigmoid applied once, downstream), ONNX parity.

The official-layout checkpoint is written here from the reference's naming rules (SlowFast i3d
ResNet-50 cut after s4, rewritten strided norms nested as ``Sequential(bn, pool)``, vit-pytorch
style transformer head), never from ``model.state_dict()``, so a drift in our module tree fails.
A forward pass costs ~67 GMACs per clip, so the few forwards are shared through fixtures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models import create_model
from models.registry import CheckpointError

NUM_PARAMS = 14_765_889  # counted on the reference implementation (yinglinzheng/FTCN, setting/ftcn_tt.yaml)
CLIP_SHAPE = (3, 32, 224, 224)
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# (stage, input channels, output channels, bottleneck width, temporal kernels of conv "a")
STAGE_RULES = (
    (2, 64, 256, 64, (3, 3, 3)),
    (3, 256, 512, 128, (3, 1, 3, 1)),
    (4, 512, 1024, 256, (3, 1, 3, 1, 3, 1)),
)
HEAD = "resnet.head.time_T"


def official_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of ftcn_tt.pth, written from the reference's rules.

    Convs are (out, in, t, 1, 1); a BatchNorm after a conv that had spatial stride 2 (stem conv,
    and in the first block of s3/s4: branch1 and branch2.b) is ``Sequential(bn, pool)``, so its
    keys gain ``.0``. s2 keeps full resolution, so its norms are plain.
    """
    layout: dict[str, tuple[int, ...]] = {}

    def conv(name: str, dim_out: int, dim_in: int, temporal: int) -> None:
        layout[f"{name}.weight"] = (dim_out, dim_in, temporal, 1, 1)

    def norm(name: str, channels: int) -> None:
        for suffix in BN_SUFFIXES:
            layout[f"{name}.{suffix}"] = () if suffix == "num_batches_tracked" else (channels,)

    conv("resnet.s1.pathway0_stem.conv", 64, 3, 5)
    norm("resnet.s1.pathway0_stem.bn.0", 64)
    for stage, dim_in, dim_out, inner, kernels in STAGE_RULES:
        for i, kernel in enumerate(kernels):
            block = f"resnet.s{stage}.pathway0_res{i}"
            strided = ".0" if stage > 2 and i == 0 else ""
            block_in = dim_in if i == 0 else dim_out
            if i == 0:  # channels change in every stage's first block: projection shortcut
                conv(f"{block}.branch1", dim_out, block_in, 1)
                norm(f"{block}.branch1_bn{strided}", dim_out)
            conv(f"{block}.branch2.a", inner, block_in, kernel)
            norm(f"{block}.branch2.a_bn", inner)
            conv(f"{block}.branch2.b", inner, inner, 1)
            norm(f"{block}.branch2.b_bn{strided}", inner)
            conv(f"{block}.branch2.c", dim_out, inner, 1)
            norm(f"{block}.branch2.c_bn", dim_out)
    layout[f"{HEAD}.pos_embedding"] = (1, 17, 1024)
    layout[f"{HEAD}.cls_token"] = (1, 1, 1024)
    layer = f"{HEAD}.transformer.layers.0"
    for sub in ("0", "1"):
        layout[f"{layer}.{sub}.fn.norm.weight"] = layout[f"{layer}.{sub}.fn.norm.bias"] = (1024,)
    layout[f"{layer}.0.fn.fn.to_qkv.weight"] = (3 * 16 * 64, 1024)
    layout[f"{layer}.0.fn.fn.to_out.0.weight"], layout[f"{layer}.0.fn.fn.to_out.0.bias"] = (1024, 1024), (1024,)
    layout[f"{layer}.1.fn.fn.net.0.weight"], layout[f"{layer}.1.fn.fn.net.0.bias"] = (2048, 1024), (2048,)
    layout[f"{layer}.1.fn.fn.net.3.weight"], layout[f"{layer}.1.fn.fn.net.3.bias"] = (1024, 2048), (1024,)
    layout[f"{HEAD}.mlp_head.0.weight"] = layout[f"{HEAD}.mlp_head.0.bias"] = (1024,)
    layout[f"{HEAD}.mlp_head.1.weight"], layout[f"{HEAD}.mlp_head.1.bias"] = (1, 1024), (1,)
    return layout


def official_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the official layout, scaled so activations stay O(1) through the network.

    Saved the way the authors' DataParallel training saved it: ``module.`` on every key.
    """
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in official_layout().items():
        if key.endswith("num_batches_tracked"):
            value = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            value = torch.rand(shape, generator=generator) + 0.5
        elif key.endswith(("running_mean", "bias")):
            value = 0.01 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:  # BatchNorm / LayerNorm scale
            value = torch.rand(shape, generator=generator) * 0.5 + 0.5
        elif key.endswith(("pos_embedding", "cls_token")):
            value = 0.02 * torch.randn(shape, generator=generator)
        else:  # conv / linear weight (out, in, ...): He-normal keeps the clip's signal through the ReLUs
            value = torch.randn(shape, generator=generator) * np.sqrt(2 / np.prod(shape[1:]))
        state[f"module.{key}"] = value
    return state


@pytest.fixture(scope="module")
def checkpoint_state() -> dict[str, torch.Tensor]:
    return official_checkpoint()


@pytest.fixture(scope="module")
def loaded(checkpoint_state: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    """FTCN built by the registry from an official-layout file."""
    path = tmp_path_factory.mktemp("ftcn") / "ftcn_tt.pth"
    torch.save(checkpoint_state, path)
    return create_model("ftcn", checkpoint=path)


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    """Two clips with coarse moving structure plus noise.

    Pure per-pixel noise averages out in the 14x14 token pooling and gives near-equal logits for
    any two clips; coarse content makes the logit depend on the clip well above the 1e-4 parity
    tolerance, so a wrong backbone in the ONNX graph cannot hide.
    """
    generator = torch.Generator().manual_seed(1)
    coarse = torch.randn(2, 3, 8, 7, 7, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=CLIP_SHAPE[1:], mode="trilinear")
    return smooth + 0.3 * torch.randn(2, *CLIP_SHAPE, generator=generator)


@pytest.fixture(scope="module")
def torch_logits(loaded: torch.nn.Module, clips: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return loaded(clips)


def test_size_and_key_layout_match_the_official_file() -> None:
    torch.manual_seed(0)
    model = create_model("ftcn")
    layout = official_layout()
    assert len(layout) == 275  # keys in the official ftcn_tt.pth (yinglinzheng/FTCN's release)
    assert sum(p.numel() for p in model.parameters()) == NUM_PARAMS
    learned = [shape for key, shape in layout.items() if not key.endswith(("running_mean", "running_var", "tracked"))]
    assert sum(int(np.prod(shape)) for shape in learned) == NUM_PARAMS
    own = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert sorted(set(own) ^ set(layout)) == []
    assert {key: shape for key, shape in own.items() if layout[key] != shape} == {}


def test_official_file_loads_every_tensor(loaded: torch.nn.Module, checkpoint_state: dict[str, torch.Tensor]) -> None:
    own = loaded.state_dict()
    for key, value in checkpoint_state.items():
        assert torch.equal(own[key.removeprefix("module.")], value), key
    assert not loaded.training  # the registry hands out eval-mode networks: dropout off, BN running stats


def test_forward_returns_one_finite_logit_per_clip(torch_logits: torch.Tensor) -> None:
    assert torch_logits.shape == (2,)
    assert torch.isfinite(torch_logits).all()
    assert abs(float(torch_logits[0] - torch_logits[1])) > 1e-3  # the logit depends on the clip


def test_forward_refuses_other_clip_shapes(loaded: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="expects clips"):
        loaded(torch.zeros(1, 3, 16, 224, 224))


def test_sigmoid_is_not_applied_inside_the_model(checkpoint_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    """With a zero final weight the logit is exactly the bias b, so P(fake) = sigmoid(b) downstream."""
    state = dict(checkpoint_state)
    state[f"module.{HEAD}.mlp_head.1.weight"] = torch.zeros(1, 1024)
    state[f"module.{HEAD}.mlp_head.1.bias"] = torch.tensor([1.25])
    torch.save(state, tmp_path / "constant.pth")
    model = create_model("ftcn", checkpoint=tmp_path / "constant.pth")
    torch.manual_seed(2)
    with torch.inference_mode():
        logit = model(torch.randn(1, *CLIP_SHAPE))
    assert logit.tolist() == [1.25]  # a sigmoid inside would give 0.777...


def test_missing_num_batches_tracked_still_loads(checkpoint_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    """Files saved by other PyTorch versions may lack the BN counters; nothing reads them."""
    state = {k: v for k, v in checkpoint_state.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "no_counters.pth")
    model = create_model("ftcn", checkpoint=tmp_path / "no_counters.pth")
    key = "resnet.s4.pathway0_res0.branch1_bn.0.running_var"
    assert torch.equal(model.state_dict()[key], checkpoint_state[f"module.{key}"])


def test_checkpoints_that_do_not_fit_name_the_keys(checkpoint_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    missing = dict(checkpoint_state)
    del missing["module.resnet.s3.pathway0_res0.branch2.b_bn.0.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing 1 keys: resnet\.s3\.pathway0_res0\.branch2\.b_bn\.0\.weight"):
        create_model("ftcn", checkpoint=tmp_path / "missing.pth")

    wrong_shape = dict(checkpoint_state)
    wrong_shape[f"module.{HEAD}.pos_embedding"] = torch.zeros(1, 9, 1024)
    torch.save(wrong_shape, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"time_T\.pos_embedding: \(1, 9, 1024\) vs \(1, 17, 1024\)"):
        create_model("ftcn", checkpoint=tmp_path / "shape.pth")

    # a stage-5 network (stop_point 6) would carry s5 weights: refused, not silently ignored
    extra = dict(checkpoint_state)
    extra["module.resnet.s5.pathway0_res0.branch1.weight"] = torch.zeros(2048, 1024, 1, 1, 1)
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected 1 keys: resnet\.s5\.pathway0_res0\.branch1\.weight"):
        create_model("ftcn", checkpoint=tmp_path / "extra.pth")


def test_onnx_export_matches_torch_with_dynamic_batch(
    loaded: torch.nn.Module, clips: torch.Tensor, torch_logits: torch.Tensor, tmp_path: Path
) -> None:
    import onnx
    import onnxruntime as ort

    path = tmp_path / "ftcn.onnx"
    program = torch.onnx.export(
        loaded,
        (torch.zeros(2, *CLIP_SHAPE),),
        dynamo=True,
        input_names=["input"],
        output_names=["logit"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
        opset_version=18,
        external_data=False,
    )
    program.save(str(path), external_data=False)
    graph = onnx.load(str(path)).graph
    (output,) = graph.output
    input_dims = graph.input[0].type.tensor_type.shape.dim
    assert input_dims[0].dim_param and not input_dims[0].dim_value  # symbolic batch
    assert [d.dim_value for d in input_dims[1:]] == list(CLIP_SHAPE)
    assert len(output.type.tensor_type.shape.dim) == 1

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (pair,) = session.run(["logit"], {"input": clips.numpy()})
    (single,) = session.run(["logit"], {"input": clips[:1].numpy()})
    assert pair.shape == (2,) and single.shape == (1,)
    np.testing.assert_allclose(pair, torch_logits.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(single, torch_logits[:1].numpy(), rtol=0, atol=1e-4)
