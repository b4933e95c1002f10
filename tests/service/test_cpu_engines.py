"""CPU engines: OpenVINO beside ONNX Runtime, the INT8 variant, and the start-up choice between them.

Real exports of a real network (random weights: the engines must agree with each other, not detect),
real OpenVINO and ONNX Runtime sessions, and ``python -m export.quantize`` on shared videos through
the serving pipeline.
"""

from __future__ import annotations

import asyncio
import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from export.__main__ import export_model
from export.manifest import Manifest, Variant
from export.quantize import INT8_FILE
from export.quantize import main as quantize_main
from models import create_model
from service.config import Settings
from service.model_repository import discover
from service.pipeline.engine_choice import candidates
from service.pipeline.engines import normalize
from service.pipeline.openvino_engine import cpu_has_bf16, openvino_available
from service.serving import Serving

if not openvino_available():  # never pytest.importorskip("openvino"): a bare import phones home
    pytest.skip("openvino is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def advgame_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """advgame B0 with random weights, exported as the bundle's models are (fp16-stored weights)."""
    work = tmp_path_factory.mktemp("cpu_engines")
    torch.manual_seed(0)
    model = create_model("advgame", variant="b0")
    checkpoint = work / "advgame.pt"
    torch.save({"model": "advgame", "model_kwargs": {"variant": "b0"}, "state_dict": model.state_dict()}, checkpoint)
    export_model("advgame", work / "repo", checkpoint=checkpoint, parity_batches=[1, 2], fp16_weights=True)
    return work / "repo"


def load(repository: Path, **settings: object) -> Serving:
    state = Serving(Settings(model_repository=repository, device="cpu", face_detector="blazeface", **settings))
    asyncio.run(state.load())
    assert state.ready, state.reason
    return state


def test_openvino_onnxruntime_and_torch_agree(advgame_repository: Path) -> None:
    crops = np.random.default_rng(0).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    results, runtimes = {}, {}
    for runtime in ("onnxruntime", "openvino", "torch"):
        state = load(advgame_repository, runtime=runtime)
        loaded = state.models["advgame"]
        results[runtime] = loaded.batcher.engine.run(normalize(loaded.spec, crops))
        runtimes[runtime] = loaded.runtime
    assert runtimes == {
        "onnxruntime": "onnxruntime:CPUExecutionProvider",
        "openvino": "openvino:CPU",
        "torch": "torch:cpu:fp32",
    }
    np.testing.assert_allclose(results["openvino"], results["onnxruntime"], atol=1e-4)
    np.testing.assert_allclose(results["openvino"], results["torch"], atol=2e-3)  # torch: fp32 weights


def test_engines_without_the_memory_arena_score_the_same_and_batches_default_to_16_on_a_cpu(
    advgame_repository: Path,
) -> None:
    """DFS_CPU_MEMORY_ARENA=false: ONNX Runtime without its CPU arena and OpenVINO releasing its buffers
    after each batch give the same scores; DFS_BATCH_MAX_FRAMES=0 is 16 on a CPU, a set value is kept."""
    crops = np.random.default_rng(1).integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)
    scores = {}
    for runtime in ("onnxruntime", "openvino"):
        for arena in (True, False):
            state = load(advgame_repository, runtime=runtime, cpu_memory_arena=arena)
            loaded = state.models["advgame"]
            assert loaded.batcher.max_batch == 16
            engine = loaded.batcher.engine
            if runtime == "onnxruntime":
                assert engine.session.get_session_options().enable_cpu_mem_arena is arena
            else:
                assert engine.release_memory is (not arena)
            scores[runtime, arena] = engine.run(normalize(loaded.spec, crops))
    for key, value in scores.items():
        np.testing.assert_allclose(value, scores["onnxruntime", True], atol=1e-4, err_msg=str(key))
    assert load(advgame_repository, batch_max_frames=48).models["advgame"].batcher.max_batch == 48


def test_auto_times_both_runtimes_and_serves_the_faster(
    advgame_repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.pipeline.engine_choice"):
        state = load(advgame_repository, data_dir=tmp_path)
    choice = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("advgame:"))
    timed = dict(part.rsplit(" ", 2)[0:2] for part in choice.split(" -> ")[0].removeprefix("advgame: ").split(", "))
    assert set(timed) == {"onnxruntime fp32", "openvino fp32"}, choice
    fastest = min(timed, key=lambda label: float(timed[label]))
    assert choice.endswith(f"-> {fastest}")
    served = state.models["advgame"].runtime
    assert served.startswith("openvino" if fastest.startswith("openvino") else "onnxruntime")

    # a restart on the same machine and files reuses the choice instead of timing again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="service.pipeline.engine_choice"):
        again = load(advgame_repository, data_dir=tmp_path)
    reused = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("advgame:"))
    assert reused.startswith(f"advgame: {fastest} (timed before:") and "engine_choice.json" in reused
    assert again.models["advgame"].runtime == served


def with_variant(repository: Path, tmp_path: Path, **fields: object) -> Path:
    """A copy of the repository whose advgame has an INT8 file (a copy of fp32: only the choice is tested)."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(repository, copy)
    folder = next(p for p in (copy / "advgame").iterdir() if p.is_dir())
    shutil.copy(folder / "model.onnx", folder / INT8_FILE)
    manifest = Manifest.read(folder)
    manifest.variants = [Variant(**({"file": INT8_FILE} | fields))]
    manifest.write(folder)
    return copy


def bf16_variant(**fields: object) -> dict[str, object]:
    """A bf16 variant entry as ``export.quantize --precision bf16`` writes it: the fp32 file, OpenVINO only."""
    return {"file": "model.onnx", "precision": "bf16", "runtime": "openvino"} | fields


@pytest.mark.parametrize(
    ("auc", "precision", "bf16_cpu", "expected"),
    [
        (0.80, "auto", True, {("openvino", "bf16"), ("openvino", "fp32"), ("onnxruntime", "fp32")}),
        (0.80, "auto", False, {("openvino", "fp32"), ("onnxruntime", "fp32")}),  # no native bf16: never offered
        (0.70, "auto", True, {("openvino", "fp32"), ("onnxruntime", "fp32")}),  # loses 0.105 AUC
        (None, "auto", True, {("openvino", "fp32"), ("onnxruntime", "fp32")}),  # unmeasured
        (0.70, "bf16", True, {("openvino", "bf16")}),  # asked for: served whatever it measured
        (0.80, "bf16", False, {("openvino", "fp32"), ("onnxruntime", "fp32")}),  # asked for, CPU cannot: fp32
        (0.80, "fp32", True, {("openvino", "fp32"), ("onnxruntime", "fp32")}),
        (0.80, "int8", True, {("openvino", "fp32"), ("onnxruntime", "fp32")}),  # int8 asked, none there
    ],
)
def test_bf16_variant_competes_only_on_a_bf16_cpu_and_when_its_auc_is_kept(
    advgame_repository: Path,
    tmp_path: Path,
    auc: float | None,
    precision: str,
    bf16_cpu: bool,
    expected: set[tuple[str, str]],
) -> None:
    repository = with_variant(advgame_repository, tmp_path, **bf16_variant(auc_fp32=0.805, auc=auc))
    version = discover(repository)["advgame"]
    options = candidates(version, "auto", precision, openvino_installed=True, bf16_cpu=bf16_cpu)
    assert {(option.runtime, option.precision) for option in options} == expected
    assert all(option.path.name == "model.onnx" for option in options)
    # ONNX Runtime alone cannot compute bf16 on a CPU: asked for bf16 there, it serves fp32
    only_ort = candidates(version, "onnxruntime", "bf16", openvino_installed=True, bf16_cpu=True)
    assert [(o.runtime, o.precision) for o in only_ort] == [("onnxruntime", "fp32")]


@pytest.mark.parametrize(("ensemble_auc", "competes"), [(0.845, True), (0.848 - 0.03, False), (None, True)])
def test_a_variant_that_moves_the_ensemble_beyond_001_does_not_compete(
    advgame_repository: Path, tmp_path: Path, ensemble_auc: float | None, competes: bool
) -> None:
    """Its own AUC unchanged, the ensemble's with every model in that precision 0.03 lower: not a default."""
    fields = bf16_variant(auc_fp32=0.8, auc=0.8, ensemble_auc_fp32=0.848, ensemble_auc=ensemble_auc)
    version = discover(with_variant(advgame_repository, tmp_path, **fields))["advgame"]
    options = candidates(version, "auto", "auto", openvino_installed=True, bf16_cpu=True)
    assert (("openvino", "bf16") in {(o.runtime, o.precision) for o in options}) is competes
    forced = candidates(version, "auto", "bf16", openvino_installed=True, bf16_cpu=True)
    assert [(o.runtime, o.precision) for o in forced] == [("openvino", "bf16")]


def test_openvino_is_told_its_precision_and_bf16_serves_where_the_cpu_computes_it(
    advgame_repository: Path, tmp_path: Path
) -> None:
    """fp32 is set explicitly (AMX CPUs default to bf16); DFS_PRECISION=bf16 serves bf16 where the CPU
    has it, within bf16's rounding of fp32, and fp32 (saying so) where it has not."""
    crops = np.random.default_rng(3).integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)
    fp32 = load(advgame_repository, runtime="openvino", precision="fp32").models["advgame"]
    assert fp32.batcher.engine.inference_precision == "f32"
    reference = fp32.batcher.engine.run(normalize(fp32.spec, crops))

    repository = with_variant(advgame_repository, tmp_path, **bf16_variant(auc_fp32=0.8, auc=0.8))
    served = load(repository, runtime="openvino", precision="bf16").models["advgame"]
    scores = served.batcher.engine.run(normalize(served.spec, crops))
    hint = served.batcher.engine.inference_precision
    if cpu_has_bf16():
        assert (served.runtime, hint) == ("openvino:CPU:bf16", "bf16")
        difference = float(np.abs(scores - reference).max())
        assert 0 < difference < 0.5, difference  # bf16 keeps 8 bits of mantissa: close, not equal
    else:
        assert (served.runtime, hint) == ("openvino:CPU", "f32")
        np.testing.assert_allclose(scores, reference, atol=1e-5)


@pytest.mark.parametrize(
    ("auc", "precision", "expected"),
    [
        (0.80, "auto", {"int8", "fp32"}),  # within 0.01 of fp32's 0.805: competes
        (0.70, "auto", {"fp32"}),  # loses 0.105 AUC: never a default
        (None, "auto", {"fp32"}),  # unmeasured: never a default
        (0.70, "int8", {"int8"}),  # asked for: served whatever it measured
        (0.80, "fp32", {"fp32"}),
    ],
)
def test_int8_variant_competes_only_when_its_auc_is_kept(
    advgame_repository: Path, tmp_path: Path, auc: float | None, precision: str, expected: set[str]
) -> None:
    repository = with_variant(advgame_repository, tmp_path, auc_fp32=0.805, auc=auc)
    version = discover(repository)["advgame"]
    options = candidates(version, "auto", precision, openvino_installed=True)
    assert {option.precision for option in options} == expected
    assert {option.runtime for option in options} == {"onnxruntime", "openvino"}


def test_openvino_asked_for_but_missing_is_a_clear_error(advgame_repository: Path) -> None:
    version = discover(advgame_repository)["advgame"]
    with pytest.raises(RuntimeError, match="DFS_RUNTIME=openvino but the openvino package is not installed"):
        candidates(version, "openvino", "auto", openvino_installed=False)
    assert {o.runtime for o in candidates(version, "auto", "auto", openvino_installed=False)} == {"onnxruntime"}


def quantize_workspace(
    repository: Path,
    shared_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    train: list[tuple[str, str]],
) -> tuple[Path, Path]:
    """A copy of ``repository`` and a label list: ``train`` (label, shared video) rows and two val videos,
    one of each class; the pipeline capped at 24 frames and 4 frames per track, to stay quick."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(repository, copy)
    labels = tmp_path / "labels.csv"
    rows = [(label, name, "train") for label, name in train]
    rows += [("real", "wild_real_Bateman.mp4", "val"), ("fake", "wild_fake_Reagan.mp4", "val")]
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "path", "split"])
        writer.writerows([label, str(shared_data / "videos" / name), split] for label, name, split in rows)
    for key, value in {"DFS_MAX_FRAMES": "24", "DFS_FRAMES_PER_TRACK": "4"}.items():
        monkeypatch.setenv(key, value)
    return copy, labels


@pytest.mark.slow
def test_quantize_writes_a_measured_int8_variant_that_the_service_serves(
    advgame_repository: Path, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI end to end: crops recorded through the pipeline, QDQ file, parity and AUCs in the manifest."""
    train = [("real", "wild_real_Obama.mp4"), ("fake", "wild_fake_Obama.mp4")]
    repository, labels = quantize_workspace(advgame_repository, shared_data, tmp_path, monkeypatch, train)
    assert quantize_main(["--repository", str(repository), "--labels", str(labels), "--items-per-video", "4"]) == 0

    folder = next(p for p in (repository / "advgame").iterdir() if p.is_dir())
    assert (folder / INT8_FILE).stat().st_size < (folder / "model.onnx").stat().st_size
    variant = Manifest.read(folder).variant("int8")
    assert variant is not None and variant.file == INT8_FILE
    assert variant.calibration["split"] == "train" and variant.calibration["items"] >= 4
    assert variant.parity_samples >= 1 and variant.max_abs_diff_logit is not None
    assert variant.auc_fp32 is not None and variant.auc is not None and "split val" in variant.auc_data
    assert variant.command and variant.command.startswith("python -m export.quantize")

    state = load(repository, runtime="openvino", precision="int8")
    loaded = state.models["advgame"]
    assert (loaded.file, loaded.runtime) == (INT8_FILE, "openvino:CPU:int8")
    crops = np.random.default_rng(2).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    assert np.isfinite(loaded.batcher.engine.run(normalize(loaded.spec, crops))).all()


@pytest.mark.slow
def test_quantize_bf16_measures_the_fp32_file_in_bf16_or_refuses_a_cpu_without_it(
    advgame_repository: Path,
    shared_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--precision bf16`` writes no file: a variant naming the fp32 file and OpenVINO, with parity and
    both AUCs, that DFS_PRECISION=bf16 then serves; a CPU without native bf16 gets exit 2 and why."""
    train = [("real", "wild_real_Obama.mp4")]
    repository, labels = quantize_workspace(advgame_repository, shared_data, tmp_path, monkeypatch, train)
    files_before = sorted(p.name for p in repository.rglob("*") if p.is_file())
    argv = ["--precision", "bf16", "--repository", str(repository), "--labels", str(labels), "--items-per-video", "4"]
    status = quantize_main(argv)
    folder = next(p for p in (repository / "advgame").iterdir() if p.is_dir())
    if not cpu_has_bf16():
        assert status == 2 and "AVX-512 BF16 or AMX" in capsys.readouterr().err
        assert Manifest.read(folder).variant("bf16") is None
        return
    assert status == 0
    assert sorted(p.name for p in repository.rglob("*") if p.is_file()) == files_before  # no new file
    variant = Manifest.read(folder).variant("bf16")
    assert variant is not None and (variant.file, variant.runtime) == ("model.onnx", "openvino")
    assert variant.parity_samples >= 4 and 0 < (variant.max_abs_diff_logit or 0) < 1
    assert variant.auc_fp32 is not None and variant.auc is not None and "split val" in variant.auc_data
    assert variant.ensemble_auc_fp32 is not None and variant.ensemble_auc is not None
    assert variant.ensemble_with == ["advgame"]  # the one model: the set measured is itself
    out = capsys.readouterr().out
    assert "AUC bf16" in out and "ensemble (every model bf16): video AUC" in out
    # the mix line names the one model as served in bf16, or says no set keeps the ensemble
    chosen = "served together in bf16 under DFS_PRECISION=auto: advgame" in out
    assert chosen == variant.quality_kept() and (chosen or "none competes" in out)

    loaded = load(repository, runtime="openvino", precision="bf16").models["advgame"]
    assert (loaded.file, loaded.runtime) == ("model.onnx", "openvino:CPU:bf16")


def test_quantize_bf16_on_a_cpu_without_native_bf16_exits_2_before_any_work(
    advgame_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import export.quantize

    monkeypatch.setattr(export.quantize, "cpu_has_bf16", lambda: False)  # as on an AVX2-only CPU
    labels = tmp_path / "labels.csv"
    labels.write_text("label,path,split\n")  # never read: refused first
    status = quantize_main(["--precision", "bf16", "--repository", str(advgame_repository), "--labels", str(labels)])
    assert status == 2
    assert "must be measured on a CPU where OpenVINO computes bfloat16 natively" in capsys.readouterr().err
