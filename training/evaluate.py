"""``python -m training.evaluate``: score a checkpoint on held-out tracks, fit its calibration.

    python -m training.evaluate --checkpoint runs/ftcn/best.pt --data crops/ --split test

Prints AUC, AP, EER and accuracy (item level and video level), fits the calibration that
``python -m export`` writes into the manifest — a temperature (by minimising the log-loss of the
logits) and a decision threshold (the video-level EER point) — saves a ROC curve PNG, and with
``--write`` stores calibration and metrics back into the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_curve
from torch.utils.data import DataLoader

from models.registry import create_model
from models.spec import ModelSpec
from training.data import ClipDataset, FrameDataset, collate, load_index
from training.metrics import binary_metrics, per_video

log = logging.getLogger("training.evaluate")


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T minimising the binary log-loss of ``sigmoid(logit / T)`` (LBFGS on log T)."""
    x = torch.tensor(logits, dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.float64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def eer_threshold(labels: list[int], scores: list[float]) -> float:
    """The score where false-positive and false-negative rates meet."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    k = int(np.nanargmin(np.abs((1 - tpr) - fpr)))
    return float(np.clip(thresholds[k], 1e-4, 1 - 1e-4))


def predict(checkpoint: dict[str, Any], data: Path, split: str, batch_size: int) -> tuple[list[float], list[int], list[str]]:
    """Fake logits of every item of ``split`` (frames spread over tracks, or clips)."""
    model = create_model(checkpoint["model"], checkpoint=checkpoint)
    spec = ModelSpec.from_dict(checkpoint["spec"]) if checkpoint.get("spec") else model.spec
    records = load_index(data, [split])
    if not records:
        raise ValueError(f"no tracks in split {split!r} of {data}")
    if spec.kind == "clip":
        dataset = ClipDataset(records, spec, stride=spec.num_frames, max_clips_per_track=8)
    else:
        dataset = FrameDataset(records, spec, frames_per_track=16)
    logits: list[float] = []
    labels: list[int] = []
    videos: list[str] = []
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
            logits += model(batch["image"]).float().tolist()
            labels += batch["label"].tolist()
            videos += batch["video"]
    return logits, labels, videos


def save_roc(path: Path, labels: list[int], scores: list[float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(labels, scores)
    figure, axis = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    axis.plot(fpr, tpr, label="ROC")
    axis.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def evaluate(checkpoint_path: Path, data: Path, split: str, batch_size: int, roc_path: Path | None) -> dict[str, Any]:
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    logits, labels, videos = predict(checkpoint, data, split, batch_size)
    probs = [1 / (1 + math.exp(-v)) for v in logits]
    video_labels, video_scores = per_video(videos, labels, probs)
    both_classes = len(set(video_labels)) == 2
    temperature = fit_temperature(np.array(logits), np.array(labels)) if len(set(labels)) == 2 else 1.0
    calibrated = [1 / (1 + math.exp(-v / temperature)) for v in logits]
    _, calibrated_video = per_video(videos, labels, calibrated)
    threshold = eer_threshold(video_labels, calibrated_video) if both_classes else 0.5
    result = {
        "split": split,
        # per video: (label, mean P(fake)); a dozen videos are easier to judge one by one than by AUC
        "per_video": {Path(v).name: {"label": int(y), "score": round(float(p), 4)}
                      for v, y, p in zip(sorted(set(videos)), video_labels, video_scores, strict=True)},
        "items": binary_metrics(labels, probs),
        "videos": binary_metrics(video_labels, video_scores),
        "calibration": {"temperature": temperature, "threshold": threshold},
        "videos_at_calibrated_threshold": binary_metrics(video_labels, calibrated_video, threshold),
    }
    if roc_path is not None and both_classes:
        save_roc(roc_path, video_labels, video_scores, f"{checkpoint['model']} ({split}, {len(video_labels)} videos)")
        result["roc_png"] = str(roc_path)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint from training.train")
    parser.add_argument("--data", required=True, type=Path, help="preprocessed data (index.csv)")
    parser.add_argument("--split", default="test", help="which split to score (default: test)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--roc", type=Path, help="ROC curve PNG (default: next to the checkpoint)")
    parser.add_argument("--write", action="store_true", help="store calibration + metrics in the checkpoint for export")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    roc = args.roc or args.checkpoint.with_name(f"{args.checkpoint.stem}_roc_{args.split}.png")
    result = evaluate(args.checkpoint, args.data, args.split, args.batch_size, roc)
    print(json.dumps(result, indent=2))
    if args.write:
        checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        checkpoint["calibration"] = result["calibration"]
        command = "python -m training.evaluate " + shlex.join(sys.argv[1:] if argv is None else argv)
        checkpoint["metrics"] = {**checkpoint.get("metrics", {}), f"evaluate_{args.split}": {**result, "command": command}}
        torch.save(checkpoint, args.checkpoint)
        log.info("wrote calibration and metrics into %s", args.checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
