"""Service settings: one ``Settings`` object read from ``DFS_*`` environment variables.

The same names are used by ``python -m service``, the Dockerfile, docker-compose and the k8s
ConfigMap; tests check that those files only name settings that exist here. Comma lists are plain
strings (``DFS_MODELS=ftcn,dcl``) because that is what a ConfigMap or ``docker run -e`` holds.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def split_csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


class Settings(BaseSettings):
    """Every knob of the service, with a default that works on a laptop."""

    model_config = SettingsConfigDict(env_prefix="DFS_", env_file=None, extra="ignore")

    # --- server -----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `python -m service` binds (0.0.0.0 in containers).")
    port: int = Field(8000, description="Port `python -m service` binds.")
    workers: int = Field(1, ge=1, description="uvicorn worker processes (each loads every model).")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # --- models -----------------------------------------------------------------------------
    model_repository: Path = Field(Path("model_repository"), description="Triton-style model repository.")
    models: str = Field("", description="Comma list of models to load; empty = every model found.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where engines and the face detector run.")
    onnx_intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime CPU threads per session (0 = runtime default).")
    runtime: Literal["auto", "torch"] = Field(
        "auto",
        description="auto = the exported engine (ONNX Runtime TensorRT/CUDA/CPU provider, or a TensorRT plan); "
        "torch = eager PyTorch from the manifest's source checkpoint (the reference runtime).",
    )
    torch_dtype: Literal["fp32", "bf16"] = Field("fp32", description="Precision of the torch runtime (bf16 on GPUs).")
    torch_compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = Field(
        "off",
        description="torch.compile mode for the torch runtime (reduce-overhead adds CUDA graphs); batches are "
        "padded to power-of-two sizes so each compiles once. Compiling takes tens of seconds per model at start.",
    )
    gpu_memory_limit_mb: int = Field(
        0, ge=0, description="Cap on each ONNX Runtime CUDA session's memory arena, grown only as asked (0 = no cap)."
    )
    torch_memory_fraction: float = Field(
        0.0, ge=0, le=1, description="Share of the GPU the torch runtime and RetinaFace may cache (0 = no cap)."
    )
    engine_cache: Path | None = Field(
        None, description="Where TensorRT engines built at first start are cached (a volume in containers)."
    )
    ensemble_weights: str = Field("", description="Comma list name=weight for the ensemble; missing names weigh 1.")
    threshold: float = Field(0.5, gt=0, lt=1, description="P(fake) at or above which a video is FAKE.")

    # --- fetch ------------------------------------------------------------------------------
    allow_private_urls: bool = Field(False, description="Allow loopback/private/link-local fetch targets.")
    local_roots: str = Field("", description="Comma list of folders whose files `file_path` may name.")
    max_download_bytes: int = Field(512 * 1024 * 1024, gt=0, description="Largest video accepted (download or upload).")
    fetch_timeout_s: float = Field(60.0, gt=0, description="Wall-clock limit for one download.")
    fetch_connect_timeout_s: float = Field(10.0, gt=0)
    max_redirects: int = Field(5, ge=0)
    temp_dir: Path | None = Field(None, description="Where downloads are staged (default: system temp).")

    # --- decode -----------------------------------------------------------------------------
    max_frames: int = Field(256, gt=0, description="Frames decoded from the start of a video, at most.")
    max_video_side: int = Field(8192, gt=0, description="Refuse videos wider or taller than this (header check).")
    max_duration_s: float = Field(4 * 3600.0, gt=0, description="Refuse videos longer than this (header check).")
    decode_threads: int = Field(2, ge=0, description="FFmpeg decoder threads per request (0 = auto).")
    decoder: Literal["auto", "pyav", "nvdec"] = Field(
        "auto",
        description="auto = NVDEC (PyNvVideoCodec; frames stay on the GPU through detection and crops) when it is "
        "usable and the device is cuda, else PyAV on the CPU; nvdec = require it (start-up fails with the reason "
        "otherwise); files NVDEC cannot decode fall back to PyAV.",
    )

    # --- faces and tracks -------------------------------------------------------------------
    face_detector: Literal["auto", "blazeface", "retinaface"] = Field(
        "auto", description="auto = RetinaFace when its weights file exists, else mediapipe BlazeFace."
    )
    retinaface_weights: Path | None = Field(None, description="Pytorch_Retinaface weights (MobileNet-0.25 or ResNet-50).")
    detection_max_side: int = Field(640, ge=64, description="Frames are downscaled to this longer side for detection.")
    detect_every: int = Field(1, ge=1, description="Run the face detector every k-th frame; tracks interpolate between.")
    min_face_score: float = Field(0.5, ge=0, le=1)
    min_face_size: int = Field(24, ge=1, description="Smallest face side in pixels of the original frame.")
    max_tracks: int = Field(8, ge=1, description="Face tracks analysed per video (largest first).")
    min_track_frames: int = Field(4, ge=1, description="Tracks seen on fewer frames are dropped as noise.")
    track_iou: float = Field(0.3, gt=0, lt=1, description="IoU that links a detection to a track.")
    track_max_gap: int = Field(8, ge=0, description="Frames a track may go undetected before it ends.")

    # --- sampling ---------------------------------------------------------------------------
    clip_stride: int = Field(32, ge=1, description="Frames between clip starts for clip models (1 = every start).")
    max_clips_per_track: int = Field(8, ge=1, description="Clips scored per track, spread evenly.")
    frames_per_track: int = Field(
        16, ge=1, description="Frames scored per track by frame models, spread evenly (bench/sampling.py chose 16)."
    )

    # --- batching and admission --------------------------------------------------------------
    batch_max_clips: int = Field(8, ge=1, description="Largest batch for clip models.")
    batch_max_frames: int = Field(64, ge=1, description="Largest batch for frame models.")
    batch_max_wait_ms: float = Field(20.0, ge=0, description="How long a batch waits to fill before it runs.")
    max_concurrent_requests: int = Field(4, ge=1, description="Videos processed at once.")
    max_queued_requests: int = Field(32, ge=0, description="Videos waiting beyond that; more get 503 + Retry-After.")
    request_timeout_s: float = Field(600.0, gt=0, description="Whole-request limit after fetch.")

    # --- derived views ------------------------------------------------------------------------
    @property
    def model_names(self) -> list[str]:
        return split_csv(self.models)

    @property
    def local_root_paths(self) -> list[Path]:
        return [Path(p).resolve() for p in split_csv(self.local_roots)]

    @property
    def ensemble_weight_map(self) -> dict[str, float]:
        weights: dict[str, float] = {}
        for item in split_csv(self.ensemble_weights):
            name, _, value = item.partition("=")
            weights[name.strip()] = float(value)
        return weights


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
