"""Per-stage throughput of the pipeline on one video, and each model engine at several batch sizes.

    python bench/stages.py --video ../shared/data/videos/wild_fake_Obama.mp4 --repository model_repository
    python bench/stages.py --help

Prints one table and writes the same numbers as JSON (``--json``). Runs on CPU or GPU: the engine
runtime is whatever ONNX Runtime picks (``--device``), and ``--torch`` adds eager PyTorch fp32 for
the same models as the reference column.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.config import Settings  # noqa: E402
from service.model_repository import discover  # noqa: E402
from service.pipeline.crops import SamplingOptions, extract_crops, plan_crops  # noqa: E402
from service.pipeline.decode import iter_frames, probe  # noqa: E402
from service.pipeline.engines import OnnxEngine, normalize  # noqa: E402
from service.pipeline.face_tracks import StageClock, find_tracks  # noqa: E402
from service.pipeline.faces import create_detector  # noqa: E402


def timed(fn, repeat: int = 3) -> float:  # noqa: ANN001 - any callable
    """Median wall time of ``fn()`` over ``repeat`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--max-frames", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batches", default="1,4,8", help="engine batch sizes to time")
    parser.add_argument("--torch", action="store_true", help="also time eager PyTorch fp32 (random init)")
    parser.add_argument("--retinaface-weights", type=Path)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    settings = Settings(device=args.device, retinaface_weights=args.retinaface_weights, max_frames=args.max_frames)
    rows: list[dict] = []
    info = probe(args.video, max_side=settings.max_video_side, max_duration_s=settings.max_duration_s)
    frames = min(args.max_frames, info.frames or args.max_frames)

    seconds = timed(lambda: sum(1 for _ in iter_frames(args.video, max_frames=frames)), 2)
    rows.append({"stage": "decode full-res RGB (PyAV)", "items": frames, "per_s": frames / seconds})
    small = [f.rgb for f in iter_frames(args.video, max_frames=frames, max_side=settings.detection_max_side)]
    detector = create_detector(settings)
    seconds = timed(lambda: detector.detect(small), 2)
    rows.append(
        {
            "stage": f"face detection ({detector.name}, {small[0].shape[1]}x{small[0].shape[0]})",
            "items": len(small),
            "per_s": len(small) / seconds,
        }
    )
    clock = StageClock()
    tracks, frames_read = find_tracks(args.video, info, detector, settings, frames, clock)

    versions = discover(args.repository)
    specs = {name: v.manifest.model_spec() for name, v in versions.items()}
    items = plan_crops(
        tracks, specs, SamplingOptions(settings.clip_stride, settings.max_clips_per_track, settings.frames_per_track)
    )
    if items:
        seconds = timed(lambda: extract_crops(args.video, items, specs, max_frames=frames_read), 2)
        rows.append({"stage": "crops (2nd decode + warps)", "items": len(items), "per_s": len(items) / seconds})

    for name, version in versions.items():
        spec = specs[name]
        engine = OnnxEngine(version.engine_path, device=args.device)
        for batch in (int(b) for b in args.batches.split(",")):
            shape = (
                (batch, spec.num_frames, spec.input_size, spec.input_size, 3)
                if spec.kind == "clip"
                else (batch, spec.input_size, spec.input_size, 3)
            )
            crops = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
            seconds = timed(lambda: engine.run(normalize(spec, crops)), 2)  # noqa: B023 - timed() calls it now
            rows.append({"stage": f"{name} {engine.runtime} batch {batch}", "items": batch, "per_s": batch / seconds})
            if args.torch:
                import torch

                from models import create_model

                model = create_model(name)
                tensor = torch.from_numpy(normalize(spec, crops))
                with torch.inference_mode():
                    seconds = timed(lambda: model(tensor), 2)  # noqa: B023 - timed() calls it now
                rows.append(
                    {"stage": f"{name} torch eager fp32 batch {batch}", "items": batch, "per_s": batch / seconds}
                )

    width = max(len(r["stage"]) for r in rows)
    print(f"{'stage':<{width}}  {'items':>6}  {'items/s':>10}")
    for row in rows:
        print(f"{row['stage']:<{width}}  {row['items']:>6}  {row['per_s']:>10.2f}")
    if args.json:
        meta = {"machine": platform.processor() or platform.machine(), "video": str(args.video), "tracks": len(tracks)}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
