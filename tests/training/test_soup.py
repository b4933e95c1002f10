"""Model soups: the mean of several runs' weights, one checkpoint that exports and serves like a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models import create_model
from models.checkpoint import TrainingCheckpoint
from training.errors import TrainingFileMissing, TrainingInputError
from training.soup import main, make_soup


def _run(tmp_path: Path, name: str, seed: int, **kwargs: object) -> Path:
    """A DCL checkpoint whose weights are a seed's random draw, as two seeds' runs would differ."""
    torch.manual_seed(seed)
    options = {"backbone": "mobilenetv2_100", **kwargs}
    model = create_model("dcl", **options)
    state = model.state_dict()
    state["encoder.bn1.num_batches_tracked"] += 10 * (seed + 1)  # differs per run, as after training
    checkpoint = TrainingCheckpoint(
        model="dcl",
        state_dict=state,
        model_kwargs=options,
        spec=model.spec,
        epoch=2,
        step=40,
        best_val_auc=0.7,
        command=f"python -m training.train --method dcl --seed {seed}",
    )
    return checkpoint.save(tmp_path / f"{name}.pt")


def test_a_soup_is_the_mean_of_its_runs_and_exports_as_that_network(tmp_path: Path) -> None:
    first, second = _run(tmp_path, "s0", 0), _run(tmp_path, "s1", 1)
    out = tmp_path / "soup" / "best.pt"
    assert main([str(first), str(second), "--output", str(out)]) == 0

    soup = TrainingCheckpoint.load(out)
    a, b = TrainingCheckpoint.load(first).state_dict, TrainingCheckpoint.load(second).state_dict
    weight = "encoder.conv_stem.weight"
    assert not torch.equal(a[weight], b[weight])
    torch.testing.assert_close(soup.state_dict[weight], (a[weight] + b[weight]) / 2)
    running = "encoder.bn1.running_var"
    torch.testing.assert_close(soup.state_dict[running], (a[running] + b[running]) / 2)
    # integer buffers are counts, not weights: the first run's, not a mean
    assert int(soup.state_dict["encoder.bn1.num_batches_tracked"]) == int(a["encoder.bn1.num_batches_tracked"])
    assert soup.command.startswith("python -m training.soup ") and str(second) in soup.command
    members = soup.metrics["soup"]["members"]
    assert [m["command"] for m in members] == [
        "python -m training.train --method dcl --seed 0",
        "python -m training.train --method dcl --seed 1",
    ]

    from export.__main__ import export_model
    from export.manifest import Manifest

    folder = export_model("dcl", tmp_path / "repo", checkpoint=out, parity_batches=[1])
    manifest = Manifest.read(folder)
    assert manifest.metrics["training"]["command"] == soup.command
    assert manifest.metrics["training"]["last_validation"]["soup"]["members"][1]["checkpoint"] == str(second)
    json.loads((folder / "manifest.json").read_text())  # strict JSON, no Infinity

    # the exported network is the averaged one: ONNX Runtime reproduces torch on the soup's weights
    network = create_model("dcl", checkpoint=soup).eval()
    x = torch.rand(1, 3, network.spec.input_size, network.spec.input_size)
    with torch.inference_mode():
        expected = network(x).numpy()
    onnx_file = next(folder.rglob("*.onnx"))
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=1e-4)


def test_a_soup_refuses_runs_that_are_not_one_network(tmp_path: Path) -> None:
    first = _run(tmp_path, "s0", 0)
    with pytest.raises(TrainingInputError, match="at least two"):
        make_soup([first])
    with pytest.raises(TrainingFileMissing, match="no checkpoint"):
        make_soup([first, tmp_path / "absent.pt"])
    other_head = _run(tmp_path, "fc", 1, backbone="mobilenetv2_050")
    with pytest.raises(TrainingInputError, match="not the same network"):
        make_soup([first, other_head])


def test_the_soup_command_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = _run(tmp_path, "s0", 0)
    with pytest.raises(SystemExit) as stop:
        main([str(first), str(tmp_path / "absent.pt"), "--output", str(tmp_path / "out.pt")])
    assert stop.value.code == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


def test_the_soup_command_explains_itself() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "training.soup", "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "model soup" in shown and "--output" in shown and "different seeds" in shown


def test_runs_of_one_init_seed_start_from_the_same_weights(tmp_path: Path) -> None:
    from training.loop import _build_model
    from training.methods import method_class
    from training.train import parse_args

    def method_for(*extra: str):  # noqa: ANN202 - a Method
        options = parse_args(["--method", "dcl", "--data", str(tmp_path), "--output", str(tmp_path / "run"), *extra])
        return method_class("dcl")(options), options

    first, options = method_for("--seed", "0", "--init-seed", "5")
    assert options.init_seed == 5 and options.config()["init_seed"] == 5
    second, _ = method_for("--seed", "1", "--init-seed", "5")
    torch.manual_seed(0)
    a = _build_model(first, 5).state_dict()
    after_a = torch.rand(3)
    torch.manual_seed(1)
    b = _build_model(second, 5).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "the same init seed draws the same network whatever --seed is"
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after_a), "drawing the network leaves the run's own generator where it was"
    torch.manual_seed(1)
    c = _build_model(second, None).state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a if c[k].is_floating_point()), "without it --seed draws"
