"""``python -m export.quantize``: a faster precision of each exported model, measured on real faces.

    python -m export.quantize --repository model_repository --labels ../shared/data/corpus/labels.csv
    python -m export.quantize --precision bf16 --repository model_repository --labels ../shared/data/corpus/labels.csv

``--precision int8`` (the default): for every model in the repository (``--models`` narrows it) this

1. runs labelled videos of ``--calibration-split`` (default train: never the split quality is judged
   on) through the serving pipeline in this process, recording the normalised crops each model is
   fed, exactly as served (decode, faces, tracks, sampling, crops);
2. quantizes the fp32 ONNX file with ONNX Runtime's static post-training quantization (QDQ,
   per-channel signed INT8 weights, unsigned INT8 activations whose ranges come from the recorded
   crops of the first videos; the first convolution and the Gemm/MatMul heads stay fp32) into
   ``model.int8.onnx`` beside it; OpenVINO runs the same QDQ file;
3. measures parity against fp32 on the crops of the remaining, held-out videos (max |logit
   difference| under ONNX Runtime and OpenVINO);
4. unless ``--no-auc``, runs the ``--auc-split`` videos (default val) through the serving pipeline
   twice, fp32 and INT8 (ONNX Runtime both, so only the precision differs), and records each model's
   video AUC both ways, with the manifest calibration, and the served ensemble's with every set of
   models in the variant precision (:mod:`export.precision_mix`): the set that saves the most
   inference time, each of its subsets keeping the ensemble within 0.01 of fp32, is chosen;
5. records all of it as the manifest's ``variants`` entry (and the command). The service's
   ``DFS_PRECISION=auto`` lets the variant compete for speed only when its own AUC, and the
   ensemble's with the chosen set in that precision, are within 0.01 of fp32: the chosen set's
   members compete, the others do not.

``--precision bf16`` writes no file: OpenVINO computes the fp32 file in bfloat16 (its
``INFERENCE_PRECISION_HINT``), natively only on CPUs with AVX-512 BF16 or AMX, so it must run on such
a CPU. Steps 1, 3 and 4 are the same (parity on every recorded crop, the AUC's second pass served by
OpenVINO in bf16), and the variant entry names the fp32 file and ``runtime: openvino``.

Why ONNX Runtime's quantizer and not NNCF: it is already a dependency, writes a standard QDQ ONNX file
both runtimes read, and needs no second model format in the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from export.fp16_weights import weights_as_fp32
from export.manifest import MAX_AUC_DELTA, Manifest, Variant, within_auc_bar
from export.precision_mix import MixChoice, choose_mix
from export.served import (
    ServedRun,
    ServedRunError,
    collect,
    exits_on_served_error,
    labelled,
    served_logits,
    served_scores,
)
from service.config import Settings
from service.model_repository import ModelVersion, discover
from service.pipeline.engine_choice import seconds_per_item
from service.pipeline.engines import Engine, OnnxEngine
from service.pipeline.openvino_engine import cpu_has_bf16
from service.serving import Serving
from training.metrics import binary_metrics
from training.sources import Source

log = logging.getLogger("export.quantize")

INT8_FILE = "model.int8.onnx"
CALIBRATION_SHARE = 0.75  # of the recorded videos: activation ranges; the rest: parity
TIMING_BATCH = 16  # items per timed batch: a track's frames, as the pipeline batches them
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclass
class Recorded:
    """Normalised engine inputs of one model, one item each, with the video they came from."""

    items: list[np.ndarray] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)


class RecordingEngine:
    """Passes batches through to the served engine and keeps up to ``cap`` items per video."""

    def __init__(self, inner: Engine, store: Recorded, cap_per_video: int, current: list[str]) -> None:
        self.inner = inner
        self.runtime = inner.runtime
        self.store = store
        self.cap = cap_per_video
        self.current = current  # the video being analysed, set by the loop over sources

    def run(self, batch: np.ndarray) -> np.ndarray:
        video = self.current[0]
        taken = sum(1 for v in self.store.videos if v == video)
        for item in batch[: max(0, self.cap - taken)]:
            self.store.items.append(np.array(item))
            self.store.videos.append(video)
        return self.inner.run(batch)


def record_inputs(settings: Settings, sources: list[Source], cap_per_video: int) -> dict[str, Recorded]:
    """Each model's inputs over ``sources``, served by fp32 ONNX Runtime (the file being quantized).

    Videos go one at a time through one loaded Serving, so every batch belongs to the current video.
    """
    recorded: dict[str, Recorded] = defaultdict(Recorded)
    current = [""]

    async def run() -> None:
        serving = Serving(settings)
        await serving.load()
        if not serving.ready:
            raise ServedRunError(f"the models could not be loaded: {serving.reason}")
        for name, model in serving.models.items():
            model.batcher.engine = RecordingEngine(model.batcher.engine, recorded[name], cap_per_video, current)
        try:
            for source in tqdm(sources, desc="recording", unit="video"):
                current[0] = str(source.path)
                await served_logits(serving, [source])
        finally:
            await serving.close()

    asyncio.run(run())
    return dict(recorded)


def split_by_video(record: Recorded, share: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Calibration items (the first ``share`` of the videos) and held-out parity items (the rest)."""
    videos = list(dict.fromkeys(record.videos))
    cut = max(1, min(len(videos) - 1, round(len(videos) * share))) if len(videos) > 1 else 1
    calibration_videos = set(videos[:cut])
    calibration = [x for x, v in zip(record.items, record.videos, strict=True) if v in calibration_videos]
    held_out = [x for x, v in zip(record.items, record.videos, strict=True) if v not in calibration_videos]
    return calibration, held_out or calibration[-4:]


def quantize_file(source: Path, target: Path, input_name: str, items: list[np.ndarray], method: str) -> None:
    """Static QDQ INT8 quantization of ``source`` (fp16-stored weights are widened first)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(items)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else {input_name: item[None]}

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    with tempfile.TemporaryDirectory() as work:
        widened, prepared = Path(work) / "fp32.onnx", Path(work) / "prepared.onnx"
        onnx.save(weights_as_fp32(onnx.load(str(source))), str(widened))
        quant_pre_process(str(widened), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            nodes_to_exclude=kept_in_fp32(onnx.load(str(prepared))),
        )


def kept_in_fp32(model: onnx.ModelProto) -> list[str]:
    """The first convolution and every Gemm/MatMul (classifier heads, FTCN's transformer) stay fp32.

    Measured on the bundle's crops (max |logit| error against fp32 on held-out crops, all-INT8 ->
    these kept): advgame 0.40 -> 0.22, dcl 0.58 -> 0.51, FTCN 0.26 -> 0.02, LIB 0.37 -> 0.26, PCL-I2G
    0.11 -> 0.07. The first layer sees raw pixels with a range unlike the rest, and the heads are a
    negligible share of the compute.
    """
    convolutions = [node.name for node in model.graph.node if node.op_type == "Conv"]
    heads = [node.name for node in model.graph.node if node.op_type in ("Gemm", "MatMul")]
    return convolutions[:1] + heads


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def parity(fp32: Path, variant: Path, items: list[np.ndarray], precision: str = "int8") -> dict[str, float]:
    """Max |logit| and |P| differences of the variant against fp32 ONNX Runtime on ``items``, per runtime
    that serves it (INT8: both; bf16: OpenVINO's bf16 compute of the fp32 file)."""
    from service.pipeline.openvino_engine import OpenVinoEngine, openvino_available

    batch = np.stack(items)
    reference_engine = OnnxEngine(fp32, device="cpu")
    reference = reference_engine.run(batch)
    out: dict[str, float] = {}
    runtimes: dict[str, Engine] = {}
    if precision == "int8":
        runtimes["onnxruntime"] = OnnxEngine(variant, device="cpu")
    if openvino_available():
        runtimes["openvino"] = OpenVinoEngine(variant, precision=precision)
    for runtime, engine in runtimes.items():
        logits = engine.run(batch)
        out[f"{runtime}_logit"] = float(np.abs(logits - reference).max())
        out[f"{runtime}_prob"] = float(np.abs(_sigmoid(logits) - _sigmoid(reference)).max())
    # Speed, as the service ranks its candidates (a probe batch of the pipeline's size): the fastest
    # fp32 engine against the fastest engine of the variant; what the variant saves chooses the mix.
    probe = batch[:TIMING_BATCH]
    fp32_engines = [reference_engine] + ([OpenVinoEngine(fp32)] if openvino_available() else [])
    out["fp32_ms"] = 1000 * min(seconds_per_item(engine, probe) for engine in fp32_engines)
    if runtimes:
        out["variant_ms"] = 1000 * min(seconds_per_item(engine, probe) for engine in runtimes.values())
    return out


def video_aucs(run: ServedRun, versions: dict[str, ModelVersion]) -> dict[str, float]:
    """Each model's video AUC (calibrated track scores, maximum over tracks) in ``run``, and under
    ``ENSEMBLE`` the served ensemble's (what a user is answered: its change is the one that matters)."""
    scores = served_scores(run.predictions, {n: v.manifest.calibration for n, v in versions.items()})
    out = {}
    for name, by_video in [
        *((n, scores.model(n)) for n in versions),
        (ENSEMBLE, scores.ensemble(run.ensemble.combination)),
    ]:
        labels = [scores.labels[video] for video in by_video]
        out[name] = binary_metrics(labels, list(by_video.values()))["auc"]
    return out


ENSEMBLE = "ensemble"  # the key of the ensemble's AUC in video_aucs


def mixed_ensemble_auc(fp32: ServedRun, variant: ServedRun, in_variant: frozenset[str]) -> float:
    """The served ensemble's video AUC with the models of ``in_variant`` scored by the variant pass and
    the rest by the fp32 pass: both passes decoded the same videos and found the same faces and items,
    so a model's logits of either pass stand in for a served run of that mix."""
    predictions = {name: (variant if name in in_variant else fp32).predictions[name] for name in fp32.predictions}
    mixed = ServedRun(predictions, fp32.versions, fp32.ensemble)
    return video_aucs(mixed, fp32.versions)[ENSEMBLE]


def items_per_video(run: ServedRun, name: str) -> float:
    """How many engine items (frames or clips) ``name`` ran per scored video in ``run``."""
    pred = run.predictions.get(name)
    videos = len(set(pred.videos)) if pred is not None else 0
    return len(pred.logits) / videos if videos else 0.0


def choose_variant_mix(
    fp32: ServedRun, variant: ServedRun, report: dict[str, dict], auc32: dict[str, float], auc_variant: dict[str, float]
) -> MixChoice:
    """The set of models that serve the variant together (:func:`export.precision_mix.choose_mix`),
    ranked by the inference seconds per video each saves on this CPU."""
    names = sorted(fp32.versions)
    saving = {
        n: (report[n].get("fp32_ms", 0.0) - report[n].get("variant_ms", float("inf"))) / 1000 * items_per_video(fp32, n)
        for n in names
    }
    for name in names:
        report[name]["saved_s_per_video"] = saving[name]
    own = {n: within_auc_bar(auc_variant[n] - auc32[n]) for n in names}
    return choose_mix(names, own, lambda group: mixed_ensemble_auc(fp32, variant, group), auc32[ENSEMBLE], saving)


def write_variant(version: ModelVersion, variant: Variant) -> None:
    """Replace the manifest's entry of ``variant``'s precision with it (re-read: the file on disk is the truth)."""
    manifest = Manifest.read(version.folder)
    manifest.variants = [v for v in manifest.variants if v.precision != variant.precision] + [variant]
    manifest.write(version.folder)


@exits_on_served_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.quantize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--labels", required=True, type=Path, help="label-list CSV of videos (label,path[,split])")
    parser.add_argument("--models", default="", help="comma list (default: every model in the repository)")
    parser.add_argument(
        "--precision",
        choices=["int8", "bf16"],
        default="int8",
        help="int8: a quantized file beside each model; bf16: OpenVINO's bfloat16 compute of the fp32 file, "
        "measured on this CPU, which must have AVX-512 BF16 or AMX (default int8)",
    )
    parser.add_argument(
        "--calibration-split", default="train", help="videos whose crops set the ranges (default train)"
    )
    parser.add_argument(
        "--calibration-videos", type=int, default=16, help="videos of that split to record, spread over it (default 16)"
    )
    parser.add_argument("--items-per-video", type=int, default=8, help="crops kept per model per video (default 8)")
    parser.add_argument(
        "--method",
        choices=["minmax", "percentile", "entropy"],
        default="minmax",
        help="how activation ranges are set from the crops (default minmax)",
    )
    parser.add_argument(
        "--auc-split", default="val", help="videos the fp32 and INT8 AUCs are measured on (default val)"
    )
    parser.add_argument(
        "--no-auc",
        action="store_true",
        help="skip the AUC measurement (the variant is then not used by DFS_PRECISION=auto)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = "python -m export.quantize " + shlex.join(sys.argv[1:] if argv is None else argv)
    wanted = [m for m in args.models.split(",") if m] or None
    versions = discover(args.repository, wanted)
    fp32 = Settings(
        model_repository=args.repository, models=",".join(versions), runtime="onnxruntime", precision="fp32"
    )

    if args.precision == "bf16" and not cpu_has_bf16():  # before the recording pass: it would be wasted
        raise ServedRunError(
            "--precision bf16 must be measured on a CPU where OpenVINO computes bfloat16 natively "
            "(AVX-512 BF16 or AMX); this one has none (or openvino is not installed)"
        )
    # photos are refused by the video pipeline (too few frames): calibrate on the split's videos
    pool = [s for s in labelled(args.labels, args.calibration_split) if s.path.suffix.lower() not in PHOTO_SUFFIXES]
    if not pool:
        raise ServedRunError(f"no videos in split {args.calibration_split!r} of {args.labels}")
    picks = np.unique(np.linspace(0, len(pool) - 1, min(args.calibration_videos, len(pool))).round().astype(int))
    sources = [pool[i] for i in picks]
    log.info("recording crops of %d %s videos", len(sources), args.calibration_split)
    recorded = record_inputs(fp32, sources, args.items_per_video)

    if args.precision == "bf16":
        report = measure_bf16(versions, recorded)
    else:
        report = quantize_int8(versions, recorded, args.method)
    for name, version in versions.items():  # written now: the AUC pass below serves what the manifest lists
        write_variant(version, variant_entry(args, report[name], version, len(sources), command))
        report[name]["kept"] = False

    if not args.no_auc:
        auc_sources = labelled(args.labels, args.auc_split)
        log.info("AUC on %d %s videos: fp32, then %s", len(auc_sources), args.auc_split, args.precision)
        run32 = collect(fp32, auc_sources)
        auc32 = video_aucs(run32, versions)
        variant_settings = fp32.model_copy(update={"precision": args.precision})
        if args.precision == "bf16":
            variant_settings = variant_settings.model_copy(update={"runtime": "openvino"})
        variant_run = collect(variant_settings, auc_sources)
        not_served = {n: r for n, r in variant_run.runtimes.items() if not r.endswith(f":{args.precision}")}
        if not_served:
            raise ServedRunError(f"the {args.precision} pass did not serve {args.precision} for {not_served}")
        auc_variant = video_aucs(variant_run, versions)
        mix = choose_variant_mix(run32, variant_run, report, auc32, auc_variant)
        for name, version in versions.items():
            variant = Manifest.read(version.folder).variant(args.precision)
            if variant is None:  # written above, in this run
                raise ServedRunError(
                    f"{version.folder}: the {args.precision} variant written by this run is gone from its manifest"
                )
            variant.auc_fp32, variant.auc = auc32[name], auc_variant[name]
            record = mix.records[name]
            variant.ensemble_auc_fp32, variant.ensemble_auc = auc32[ENSEMBLE], record.ensemble_auc
            variant.ensemble_with = list(record.together)
            variant.auc_data = f"{args.labels} split {args.auc_split}, through the serving pipeline"
            write_variant(version, variant)
            report[name] |= {"auc_fp32": auc32[name], "auc": auc_variant[name], "kept": variant.quality_kept()}
    print_table(report, args.precision)
    if not args.no_auc:
        ensemble_delta = auc_variant[ENSEMBLE] - auc32[ENSEMBLE]
        verdict = "" if within_auc_bar(ensemble_delta) else f": beyond +-{MAX_AUC_DELTA}, so not all of them together"
        print(
            f"ensemble (every model {args.precision}): video AUC {auc32[ENSEMBLE]:.3f} fp32 -> "
            f"{auc_variant[ENSEMBLE]:.3f} ({ensemble_delta:+.3f}){verdict}"
        )
        print_mix(mix, auc32[ENSEMBLE], args.precision)
    return 0


def print_mix(mix: MixChoice, auc32: float, precision: str) -> None:
    """The chosen set and, for every other model, the measured set that keeps it out."""
    if mix.chosen:
        print(
            f"served together in {precision} under DFS_PRECISION=auto: {', '.join(mix.chosen)} "
            f"(ensemble {auc32:.3f} -> {mix.ensemble_auc:.3f}, every subset within +-{MAX_AUC_DELTA})"
        )
    else:
        print(f"no set of models keeps the ensemble within +-{MAX_AUC_DELTA} in {precision}: none competes")
    for name, record in mix.records.items():
        if name not in mix.chosen:
            print(
                f"  {name}: kept out (with {', '.join(record.together)} in {precision} the ensemble reads "
                f"{record.ensemble_auc:.3f}, or its own AUC moved)"
            )


def crops_of(recorded: dict[str, Recorded], name: str) -> Recorded:
    """The crops recorded for ``name``; none at all is refused (nothing to calibrate or compare on)."""
    record = recorded.get(name, Recorded())
    if not record.items:
        raise ServedRunError(f"{name}: no crops were recorded (no faces in the calibration videos?)")
    return record


def quantize_int8(versions: dict[str, ModelVersion], recorded: dict[str, Recorded], method: str) -> dict[str, dict]:
    """``model.int8.onnx`` beside each model, ranges from the first videos' crops, parity on the rest."""
    report: dict[str, dict] = {}
    for name, version in versions.items():
        calibration, held_out = split_by_video(crops_of(recorded, name), CALIBRATION_SHARE)
        target = version.folder / INT8_FILE
        log.info("%s: quantizing on %d crops, parity on %d held-out crops", name, len(calibration), len(held_out))
        quantize_file(version.engine_path, target, version.manifest.inputs[0].name, calibration, method)
        report[name] = {
            "calibration_items": len(calibration),
            "parity_items": len(held_out),
            **parity(version.engine_path, target, held_out),
        }
    return report


def measure_bf16(versions: dict[str, ModelVersion], recorded: dict[str, Recorded]) -> dict[str, dict]:
    """Parity of OpenVINO's bf16 compute against fp32 on every recorded crop (nothing is fitted on them)."""
    report: dict[str, dict] = {}
    for name, version in versions.items():
        items = crops_of(recorded, name).items
        log.info("%s: bf16 parity on %d crops", name, len(items))
        report[name] = {
            "calibration_items": 0,
            "parity_items": len(items),
            **parity(version.engine_path, version.engine_path, items, precision="bf16"),
        }
    return report


def variant_entry(args: argparse.Namespace, row: dict, version: ModelVersion, videos: int, command: str) -> Variant:
    """The manifest entry of this run's variant, before its AUC is measured."""
    if args.precision == "bf16":
        how = "OpenVINO CPU plugin, INFERENCE_PRECISION_HINT=bf16 on the fp32 file"
        file, runtime, calibration = version.manifest.file, "openvino", {}
    else:
        how = (
            "onnxruntime quantize_static: QDQ, per-channel INT8 weights, UINT8 activations, "
            f"{args.method} ranges, first Conv and Gemm/MatMul kept fp32"
        )
        file, runtime = INT8_FILE, None
        calibration = {
            "labels": str(args.labels),
            "split": args.calibration_split,
            "videos": videos,
            "items": row["calibration_items"],
        }
    return Variant(
        file=file,
        precision=args.precision,
        runtime=runtime,
        method=how,
        calibration=calibration,
        max_abs_diff_logit=max(row.get("onnxruntime_logit", 0.0), row.get("openvino_logit", 0.0)),
        max_abs_diff_prob=max(row.get("onnxruntime_prob", 0.0), row.get("openvino_prob", 0.0)),
        parity_samples=row["parity_items"],
        command=command,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def print_table(report: dict[str, dict], precision: str = "int8") -> None:
    print(
        f"\n{'model':10} {'calib':>5} {'parity':>6} {'max|dlogit| ort':>15} {'ov':>7} {'ms fp32':>7} "
        f"{'ms ' + precision:>7} {'AUC fp32':>8} {'AUC ' + precision:>8} {'delta':>7}  DFS_PRECISION=auto"
    )
    for name, row in report.items():
        auc32, auc8 = row.get("auc_fp32"), row.get("auc")
        delta = "" if auc32 is None or auc8 is None else f"{auc8 - auc32:+.3f}"
        print(
            f"{name:10} {row['calibration_items']:>5} {row['parity_items']:>6} "
            f"{row.get('onnxruntime_logit', float('nan')):>15.3f} "
            f"{row.get('openvino_logit', float('nan')):>7.3f} {row.get('fp32_ms', float('nan')):>7.1f} "
            f"{row.get('variant_ms', float('nan')):>7.1f} {'' if auc32 is None else f'{auc32:.3f}':>8} "
            f"{'' if auc8 is None else f'{auc8:.3f}':>8} {delta:>7}  "
            f"{'competes' if row['kept'] else f'not used (its |delta| or the ensemble delta > {MAX_AUC_DELTA}, or unmeasured)'}"
        )


if __name__ == "__main__":
    sys.exit(main())
