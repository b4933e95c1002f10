"""The typed training checkpoint: the file format stays a plain dict, read back into typed fields."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from models import create_model
from models.checkpoint import NotATrainingCheckpoint, TrainingCheckpoint


def test_a_checkpoint_saves_as_a_dict_and_loads_typed(tmp_path: Path) -> None:
    model = create_model("dcl", backbone="mobilenetv2_100")
    checkpoint = TrainingCheckpoint(
        model="dcl",
        state_dict=model.state_dict(),
        model_kwargs={"backbone": "mobilenetv2_100"},
        spec=model.spec,
        epoch=2,
        step=40,
        best_val_auc=0.75,
        metrics={"val/auc": 0.75},
        command="python -m training.train --method dcl",
    )
    path = checkpoint.save(tmp_path / "best.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # no partial file left behind

    raw = torch.load(path, weights_only=False)
    assert isinstance(raw, dict) and raw["model"] == "dcl" and raw["spec"] == model.spec.to_dict()
    assert "calibration" not in raw  # None fields are left out, as training always wrote them

    loaded = TrainingCheckpoint.load(path)
    assert loaded.spec == model.spec and loaded.epoch == 2 and loaded.step == 40
    assert loaded.summary() == {
        "command": "python -m training.train --method dcl",
        "epoch": 2,
        "step": 40,
        "best_val_auc": 0.75,
    }
    rebuilt = create_model("dcl", checkpoint=loaded)
    x = torch.randn(1, 3, model.spec.input_size, model.spec.input_size)
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), model.eval()(x))


def test_an_older_checkpoint_with_one_shared_scaler_still_resumes(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"model": "dcl", "state_dict": {}, "scaler": {"scale": 2.0**16}, "epoch": 1}, path)
    loaded = TrainingCheckpoint.load(path)
    assert loaded.scaler_state("main") == {"scale": 2.0**16}
    assert loaded.best_val_auc == -math.inf and loaded.spec is None and loaded.rng is None


@pytest.mark.parametrize(
    "content",
    [{"conv.weight": torch.zeros(1)}, {"state_dict": {"conv.weight": torch.zeros(1)}}, [1, 2]],
    ids=["bare state dict", "reference wrapper", "not a dict"],
)
def test_what_training_did_not_write_is_refused_with_the_reason(tmp_path: Path, content: object) -> None:
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(NotATrainingCheckpoint, match="not a checkpoint of `python -m training.train`"):
        TrainingCheckpoint.load(path)
