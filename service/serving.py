"""What the running service holds (:class:`Serving`): the face detector and one batcher per loaded model.

Named so that "runtime" keeps one meaning in this project: the inference engine a model runs on
(``DFS_RUNTIME``, ``/models``' ``runtime`` field: ONNX Runtime, OpenVINO, torch, TensorRT, Triton).

Loading happens in the background after start-up (``/healthcheck`` answers 503 with the reason
meanwhile), so orchestrators can probe the pod while engines load or TensorRT engines build.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from models.spec import ModelSpec
from service import metrics
from service.config import Settings
from service.ensemble import ServedEnsemble, resolve
from service.model_repository import ModelVersion, discover, file_sha256
from service.pipeline.engine_choice import (
    CHOICE_FILE,
    Candidate,
    ChoiceCache,
    candidates,
    choose,
    probe_shape,
)
from service.pipeline.engines import (
    DynamicBatcher,
    Engine,
    EngineUnavailable,
    OnnxEngine,
    TorchEngine,
    on_host_cpu,
    onnx_providers,
)
from service.pipeline.faces import FaceDetector, create_detector, resolve_device
from service.pipeline.failures import DfsFailure
from service.pipeline.openvino_engine import OpenVinoEngine, cpu_has_bf16, openvino_available
from service.pipeline.tensor_frames import choose_decoder

if TYPE_CHECKING:  # tritonclient is imported only on DFS_RUNTIME=triton
    from service.pipeline.triton_engine import TritonClients, TritonHealth

log = logging.getLogger(__name__)


GPU_FRAME_BATCH = 64
CPU_FRAME_BATCH = 16


def frame_batch_cap(settings: Settings) -> int:
    """``DFS_BATCH_MAX_FRAMES``, or its default for where the engines run.

    A CPU runtime (ONNX Runtime's arena, OpenVINO's buffers) keeps the working memory of its largest
    batch for good: measured on the 2-core CPU (bench/memory.py), the five-model bundle held 2.8 GB
    after batches of 64 and 0.9 GB after batches of 16 with ONNX Runtime's shared arena (4.9 and 1.5
    GB with OpenVINO), for ~10-20% more engine time per frame at 16. A GPU, or Triton, keeps 64.
    """
    if settings.batch_max_frames:
        return settings.batch_max_frames
    on_cpu = settings.runtime != "triton" and resolve_device(settings.device) == "cpu"
    return CPU_FRAME_BATCH if on_cpu else GPU_FRAME_BATCH


def limit_torch_memory(fraction: float) -> None:
    """Cap what torch's caching allocator may hold on the GPU (the torch runtime and RetinaFace share it)."""
    if not fraction:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(fraction)
        log.info("torch may cache at most %.0f%% of GPU memory", fraction * 100)


@dataclass
class LoadedModel:
    version: ModelVersion
    spec: ModelSpec
    batcher: DynamicBatcher
    file: str = ""  # name of the file the engine was built from (engine, or checkpoint for DFS_RUNTIME=torch)
    sha256: str = ""  # its SHA-256, taken once at load: /models tells which bytes are served

    @property
    def runtime(self) -> str:
        return self.batcher.engine.runtime


@dataclass
class Serving:
    """The loaded models, detector, decoder choice and ensemble one service process serves with."""

    settings: Settings
    models: dict[str, LoadedModel] = field(default_factory=dict)
    detector: FaceDetector | None = None
    decoder: str = "pyav"  # DFS_DECODER resolved at start-up: "pyav" or "nvdec"
    ensemble: ServedEnsemble = field(default_factory=ServedEnsemble)  # resolved once the models are known
    ready: bool = False
    reason: str = "models are loading"
    # DFS_RUNTIME=triton: the server's and each model's readiness, folded into /healthcheck
    remote: TritonHealth | None = None
    _triton: TritonClients | None = None
    _engine_files: dict[str, Path] = field(default_factory=dict)  # CPU engines: the file chosen per model
    _cpu_turn: threading.Lock = field(default_factory=threading.Lock)  # DFS_CPU_ENGINES_IN_TURN

    async def load(self) -> None:
        """Load detector and engines off the event loop; record why if it fails."""
        try:
            limit_torch_memory(self.settings.torch_memory_fraction)
            if self.settings.torch_compile != "off" and self.settings.runtime != "torch":
                log.warning(
                    "DFS_TORCH_COMPILE=%s has no effect: it applies to DFS_RUNTIME=torch, not %s",
                    self.settings.torch_compile,
                    self.settings.runtime,
                )
            self.decoder = await asyncio.to_thread(choose_decoder, self.settings)
            log.info("frame decoder: %s", self.decoder)
            self.detector = await asyncio.to_thread(create_detector, self.settings)
            versions = await asyncio.to_thread(
                discover,
                self.settings.model_repository,
                self.settings.model_names or None,
                self.settings.model_version_pins,
            )
            # before the engines: a malformed ensemble.json fails loading at once, not after minutes of engines
            self.ensemble = resolve(self.settings, versions)
            for name, version in versions.items():
                spec = version.manifest.model_spec()
                max_batch = self.settings.batch_max_clips if spec.kind == "clip" else frame_batch_cap(self.settings)
                engine = await self._open_engine_waiting(version, spec, max_batch)
                batcher = DynamicBatcher(
                    name,
                    engine,
                    spec,
                    max_batch=max_batch,
                    max_wait_s=self.settings.batch_max_wait_ms / 1000,
                    turn=self._cpu_turn if self.settings.cpu_engines_in_turn and on_host_cpu(engine.runtime) else None,
                )
                batcher.start()
                served = self._served_file(version)
                digest = await asyncio.to_thread(file_sha256, served)
                self.models[name] = LoadedModel(version, spec, batcher, served.name, digest)
                if version.manifest.untrained:
                    log.warning(
                        "model %s v%d is UNTRAINED (random init): its scores carry no information",
                        name,
                        version.version,
                    )
                log.info("loaded %s v%d (%s) from %s", name, version.version, engine.runtime, version.folder)
            metrics.MODELS_LOADED.set(len(self.models))
            if self._triton is not None:
                from service.pipeline.triton_engine import TritonHealth

                self.remote = TritonHealth(self._triton, {n: str(m.version.version) for n, m in self.models.items()})
            self.ready, self.reason = True, ""
        except Exception as exc:  # noqa: BLE001 - any load failure must surface in /healthcheck
            self.ready, self.reason = False, f"{type(exc).__name__}: {exc}"
            log.error("model loading failed: %s", self.reason)

    async def _open_engine_waiting(self, version: ModelVersion, spec: ModelSpec, max_batch: int) -> Engine:
        """Open an engine; an inference server that is down or still loading the model is waited for
        (with back-off up to 10 s, the reason in /healthcheck meanwhile), so the service comes up on its
        own once Triton does, whichever starts first."""
        delay = 0.5
        while True:
            try:
                return await asyncio.to_thread(self._open_engine, version, spec, max_batch)
            except EngineUnavailable as exc:
                self.reason = f"waiting for the inference server: {exc}"
                log.warning("%s: %s; retrying in %.1f s", version.name, self.reason, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def health_reason(self) -> str | None:
        """``None`` when requests can be served; else why not (loading, or Triton / a model not ready)."""
        if not self.ready:
            return self.reason
        if self.remote is not None:
            return await asyncio.to_thread(self.remote.check)
        return None

    def _triton_clients(self) -> TritonClients:
        if self._triton is None:
            from service.pipeline.triton_engine import TritonClients, TritonSettings

            s = self.settings
            self._triton = TritonClients(
                TritonSettings(
                    url=s.triton_url,
                    timeout_s=s.triton_timeout_s,
                    connect_timeout_s=s.triton_connect_timeout_s,
                    retries=s.triton_retries,
                    backoff_s=s.triton_retry_backoff_s,
                )
            )
        return self._triton

    def _served_file(self, version: ModelVersion) -> Path:
        """The file the engine runs: the chosen CPU file (fp32 or INT8), the manifest's engine, or the
        source checkpoint on the torch runtime."""
        if self.settings.runtime == "torch" and version.manifest.source.path:
            return Path(version.manifest.source.path)
        return self._engine_files.get(version.name, version.engine_path)

    def _open_engine(self, version: ModelVersion, spec: ModelSpec, max_batch: int) -> Engine:
        if self.settings.runtime == "triton":
            from service.pipeline.triton_engine import TritonEngine

            manifest = version.manifest
            return TritonEngine(
                self._triton_clients(),
                version.name,
                version.version,
                input_name=manifest.inputs[0].name,
                output_name=manifest.outputs[0].name,
                item_shape=tuple(spec.input_shape(1)[1:]),
            )
        if self.settings.runtime == "torch":
            source = version.manifest.source.path
            if not source or not Path(source).is_file():
                raise DfsFailure(
                    f"{version.name} v{version.version}: DFS_RUNTIME=torch needs the source checkpoint "
                    f"({source or 'none: exported with --random-init'}), which is not readable here"
                )
            engine = TorchEngine(
                version.name,
                Path(source),
                device=self.settings.device,
                dtype=self.settings.torch_dtype,
                compile_mode=self.settings.torch_compile,
                max_batch=max_batch,
            )
            if engine.compiled:
                log.info(
                    "%s: compiling for batch sizes up to %d (torch.compile %s)",
                    version.name,
                    engine.max_batch,
                    self.settings.torch_compile,
                )
                engine.warmup(spec.input_shape(1))
            return engine
        if version.manifest.format == "tensorrt":  # a version that is itself a plan (older exports)
            from service.pipeline.tensorrt_engine import TensorRTEngine, check_compatible

            check_compatible(version.manifest)
            return TensorRTEngine(version.engine_path.read_bytes(), max_batch=version.manifest.max_batch or 64)
        if version.manifest.plans:  # TensorRT plans beside the ONNX file: the one built for this GPU, if any
            from service.pipeline.tensorrt_engine import TensorRTEngine, machine_identity, plan_for_machine

            on_gpu = resolve_device(self.settings.device) == "cuda" and self.settings.runtime in ("auto", "onnxruntime")
            plan = plan_for_machine(version.manifest, version.folder, machine_identity() if on_gpu else None)
            if plan is not None:
                log.info("%s: TensorRT plan %s (sm %s)", version.name, plan.file, plan.compute_capability)
                self._engine_files[version.name] = version.folder / plan.file
                return TensorRTEngine((version.folder / plan.file).read_bytes(), max_batch=plan.max_batch)
        if self.settings.runtime == "openvino" and self.settings.device == "cuda":
            raise DfsFailure("DFS_RUNTIME=openvino runs on the CPU; DFS_DEVICE=cuda asks for a GPU")
        if self.settings.runtime != "openvino" and onnx_providers(self.settings.device)[0] != "CPUExecutionProvider":
            return OnnxEngine(  # a GPU: ONNX Runtime's TensorRT/CUDA provider on the fp32 file
                version.engine_path,
                device=self.settings.device,
                threads=self.settings.onnx_intra_op_threads,
                engine_cache=self.settings.engine_cache,
                gpu_memory_limit_mb=self.settings.gpu_memory_limit_mb,
            )
        options = candidates(
            version,
            self.settings.runtime,
            self.settings.precision,
            openvino_installed=openvino_available(),
            bf16_cpu=cpu_has_bf16(),
        )
        per_track = self.settings.max_clips_per_track if spec.kind == "clip" else self.settings.frames_per_track
        engine, chosen, _ = choose(
            version.name,
            options,
            self._open_cpu_engine,
            probe_shape(spec, min(max_batch, per_track)),
            threads=self.settings.onnx_intra_op_threads,
            cache=ChoiceCache(self.settings.data_dir / CHOICE_FILE),
        )
        self._engine_files[version.name] = chosen.path
        return engine

    def _open_cpu_engine(self, candidate: Candidate) -> Engine:
        threads = self.settings.onnx_intra_op_threads
        engine: OpenVinoEngine | OnnxEngine
        arena = self.settings.cpu_memory_arena
        if candidate.runtime == "openvino":
            engine = OpenVinoEngine(
                candidate.path, threads=threads, release_memory=not arena, precision=candidate.precision
            )
        else:
            engine = OnnxEngine(candidate.path, device="cpu", threads=threads, memory_arena=arena)
        if candidate.precision != "fp32":
            engine.runtime += f":{candidate.precision}"  # /models and the logs say which file's precision runs
        return engine

    async def close(self) -> None:
        for model in self.models.values():
            await model.batcher.stop()
