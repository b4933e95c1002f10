"""Service settings: one ``Settings`` object read from ``DFS_*`` environment variables.

The same names are used by ``python -m service``, the Dockerfile, docker-compose and the k8s
ConfigMap; tests check that those files only name settings that exist here. Comma lists are plain
strings (``DFS_MODELS=ftcn,dcl``) because that is what a ConfigMap or ``docker run -e`` holds.
"""

from __future__ import annotations

import math
import re
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from service.api_keys import hash_entries
from service.pipeline.failures import DfsInputError
from service.pipeline.media_settings import MediaSettings

REPLICA_ID = r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}"  # a host name's characters: safe in a URL and a folder name


def default_replica_id() -> str:
    """The host name (a pod's name under Kubernetes), cut to what a replica id may hold."""
    cleaned = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()).strip(".-")[:63]
    return cleaned or "local"


def split_csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


class Settings(MediaSettings):
    """Every knob of the service, with a default that works on a laptop.

    Decoding and face finding (``DFS_DEVICE``, ``DFS_MAX_FRAMES``, ``DFS_DETECT_EVERY``, ...) are
    inherited from the media layer's :class:`MediaSettings`; the rest is the app's own.
    """

    model_config = SettingsConfigDict(env_prefix="DFS_", env_file=None, extra="ignore")

    # --- server -----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `python -m service` binds (0.0.0.0 in containers).")
    port: int = Field(8000, description="Port `python -m service` binds.")
    workers: int = Field(1, ge=1, description="uvicorn worker processes (each loads every model).")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Connection limits (service/http_protocol.py, python -m service). uvicorn arms its keep-alive
    # timer only after a response, so a connection that trickles its request line or headers used to
    # stay open for good (300 of them did); the header deadline closes it.
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request's line and headers must arrive within this many seconds of the "
        "connection opening (or of the previous response on a keep-alive connection); else it is closed.",
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        description="A request body that stops arriving for this many seconds (no byte while some are still "
        "owed) is answered 408 body_timeout and its connection closed; nginx's client_body_timeout, same default.",
    )
    keepalive_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Idle keep-alive connections close after this (uvicorn's timeout_keep_alive; its default).",
    )
    max_connections: int = Field(
        512,
        ge=1,
        description="Open connections (and running requests) served at once; beyond, uvicorn answers "
        "503 to new requests (its limit_concurrency). Kept below the usual 1024 file-descriptor limit.",
    )
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        description="Largest request line + headers; beyond, a 400 and the connection closes "
        "(h11's incomplete-event limit; its default).",
    )
    max_json_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest body of a JSON route such as POST /predict (it needs a few KB); beyond "
        "it a 413 is answered without reading the rest. Uploads are bounded by DFS_MAX_DOWNLOAD_BYTES.",
    )

    # API keys (service/api/auth.py). Unset = the API is open (logged at start-up). The settings keep
    # only SHA-256 hashes of DFS_API_KEYS (see _hash_api_keys), and the file is read once at start-up.
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma list of API keys; when any key is set (here or in DFS_API_KEYS_FILE), "
        "every route but /healthcheck, /livez, /metrics (on this port), /docs, /openapi.json and / needs one, as "
        "`Authorization: Bearer KEY` or `X-API-Key: KEY` (else 401). An entry `sha256:HEX` is a key's hash.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="File of accepted keys, one key or `sha256:HEX` (the key's SHA-256) per line; `#` starts "
        "a comment. Keeps keys out of the environment; unreadable or empty = start-up fails.",
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Serve /metrics from prometheus_client's own server on this port (bound to "
        "DFS_HOST) and not from the API port; 0 = on the API port, as /metrics.",
    )

    # --- models -----------------------------------------------------------------------------
    model_repository: Path = Field(Path("model_repository"), description="Triton-style model repository.")
    models: str = Field("", description="Comma list of models to load; empty = every model found.")
    onnx_intra_op_threads: int = Field(
        0,
        ge=0,
        description="CPU threads per model's engine, ONNX Runtime or OpenVINO (0 = the runtime's default: every core).",
    )
    cpu_engines_in_turn: bool = Field(
        True,
        description="CPU engines compute one batch at a time in the process, each on every core, instead of "
        "all models at once on the same cores: ~0.3 GB less server memory with the five-model bundle at 1 and 4 "
        "clients on the 2-core machine, speed within the machine's noise (README); GPU and Triton engines are "
        "never held back.",
    )
    malloc_arena_max: int = Field(
        2,
        ge=0,
        description="glibc malloc arenas at most, set with mallopt when the app starts (each keeps the "
        "memory freed in it; five models at 4 clients: 2.3 GB of RSS with 2, 2.5-2.7 GB with glibc's default "
        "of 8 per core); 0 = glibc's default.",
    )
    cpu_memory_arena: bool = Field(
        True,
        description="CPU engines keep working memory for the next batch: ONNX Runtime sessions share one "
        "arena grown by exactly what is asked, OpenVINO keeps its buffers; false = hand it back after every "
        "batch: less steady memory, ~35-90% more engine time (bench/memory.py measures both).",
    )
    precision: Literal["auto", "fp32", "int8", "bf16"] = Field(
        "auto",
        description="CPU engines: auto = the model's INT8 variant (model.int8.onnx) and its bf16 variant "
        "(OpenVINO computing the fp32 file in bfloat16, only on CPUs with AVX-512 BF16 or AMX) compete with "
        "fp32 when its manifest records a video AUC within 0.01 of fp32 (`python -m export.quantize "
        "--precision int8|bf16` measures it); int8 / bf16 = that variant wherever one exists and the CPU can "
        "run it; fp32 = neither.",
    )
    runtime: Literal["auto", "onnxruntime", "openvino", "torch", "triton"] = Field(
        "auto",
        description="auto = the exported engine: on a GPU ONNX Runtime's TensorRT/CUDA provider (or a TensorRT "
        "plan); on a CPU the fastest of ONNX Runtime and OpenVINO, timed per model at start-up; onnxruntime / "
        "openvino = only that runtime (openvino: CPU only, the `openvino` package); "
        "torch = eager PyTorch from the manifest's source checkpoint (the reference runtime); triton = each "
        "model's forward pass on the Triton Inference Server at DFS_TRITON_URL (same repository, config.pbtxt "
        "from `python -m export.triton_config`).",
    )
    # DFS_RUNTIME=triton (service/pipeline/triton_engine.py). The service still decodes, finds faces and
    # batches across requests; Triton batches again across replicas and holds the GPUs.
    triton_url: str = Field(
        "",
        description="Triton's HTTP endpoint for DFS_RUNTIME=triton, e.g. http://triton:8000 "
        "(grpc:// is refused: tritonclient[grpc] needs protobuf >= 6.30, mediapipe < 5).",
    )
    triton_timeout_s: float = Field(
        30.0, gt=0, description="Network timeout of one call to Triton (a batch's inference)."
    )
    triton_connect_timeout_s: float = Field(5.0, gt=0, description="Timeout to open a connection to Triton.")
    triton_retries: int = Field(2, ge=0, description="Retries of a call to Triton after a connection error or timeout.")
    triton_retry_backoff_s: float = Field(0.2, ge=0, description="First retry delay; doubled at each retry.")
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
    ensemble_weights: str = Field(
        "",
        description="Comma list name=weight for the ensemble; missing names weigh 1. When set it overrides the "
        "repository's ensemble.json (fitted weights and bias, see service/ensemble.py); empty = that file, else equal.",
    )
    threshold: float = Field(0.5, gt=0, lt=1, description="P(fake) at or above which a video is FAKE.")
    model_versions: str = Field(
        "",
        description="Comma list model:version pinning the version folder a model serves (e.g. ftcn:2, to roll "
        "back or to keep a GPU-specific folder off other machines); unpinned models serve their highest version.",
    )

    # --- fetch ------------------------------------------------------------------------------
    allow_private_urls: bool = Field(False, description="Allow loopback/private/link-local fetch targets.")
    local_roots: str = Field("", description="Comma list of folders whose files `file_path` may name.")
    max_download_bytes: int = Field(512 * 1024 * 1024, gt=0, description="Largest video accepted (download or upload).")
    fetch_timeout_s: float = Field(60.0, gt=0, description="Wall-clock limit for one download.")
    fetch_connect_timeout_s: float = Field(10.0, gt=0)
    max_redirects: int = Field(5, ge=0)
    temp_dir: Path | None = Field(None, description="Where downloads are staged (default: system temp).")

    # --- sampling ---------------------------------------------------------------------------
    clip_stride: int = Field(32, ge=1, description="Frames between clip starts for clip models (1 = every start).")
    max_clips_per_track: int = Field(8, ge=1, description="Clips scored per track, spread evenly.")
    frames_per_track: int = Field(
        16, ge=1, description="Frames scored per track by frame models, spread evenly (bench/sampling.py chose 16)."
    )
    mirror_faces: bool = Field(
        False,
        description=(
            "Also score every crop mirrored left-right and average the two logits (test-time flip): "
            "about twice the engine time; calibrate the repository with the same setting."
        ),
    )
    # Limits on a request's own sampling overrides (lowering the work is always allowed; asking for
    # more than these is a 422 limit_exceeded, see service/api/limits.py). Their defaults allow at
    # most bench/sampling.py's "16 clips at stride 16, 32 frames", about 1.6x the default's time,
    # where stride 1 with 256 clips and frames per track cost 5-12x. A default set costlier than its
    # limit is always allowed. max_frames is bounded by DFS_MAX_FRAMES itself.
    min_clip_stride: int = Field(16, ge=1, description="Smallest clip_stride a request may ask for.")
    max_clips_per_track_limit: int = Field(16, ge=1, description="Largest max_clips_per_track a request may ask for.")
    frames_per_track_limit: int = Field(32, ge=1, description="Largest frames_per_track a request may ask for.")

    # --- batching and admission --------------------------------------------------------------
    batch_max_clips: int = Field(8, ge=1, description="Largest batch for clip models.")
    batch_max_frames: int = Field(
        0,
        ge=0,
        description="Largest batch for frame models; 0 = 64 where the engines run on a GPU or Triton, 16 "
        "on a CPU, whose runtimes keep working memory sized for the largest batch (five models on ONNX Runtime: "
        "2.8 GB at 64, 0.9 GB at 16 for ~10-20% more engine time; bench/memory.py).",
    )
    batch_max_wait_ms: float = Field(20.0, ge=0, description="How long a batch waits to fill before it runs.")
    max_concurrent_requests: int = Field(4, ge=1, description="Videos processed at once.")
    max_queued_requests: int = Field(32, ge=0, description="Videos waiting beyond that; more get 503 + Retry-After.")
    request_timeout_s: float = Field(600.0, gt=0, description="Whole-request limit after fetch.")

    # --- jobs (POST /jobs, service/jobs) ------------------------------------------------------
    # Asynchronous analyses kept in an embedded SQLite database, with a folder per job for its
    # evidence (face thumbnails, heat maps, the annotated video). They run through the same admission
    # slots and batchers as /predict.
    data_dir: Path = Field(
        Path("data"),
        description="Folder for the jobs database and each job's files "
        "(created if missing; relative to the working directory).",
    )
    jobs_db: Path | None = Field(
        None,
        description="The jobs SQLite database (WAL mode); default "
        "DFS_DATA_DIR/jobs.sqlite3. Job folders live in a `jobs` folder beside it.",
    )
    job_ttl_s: float = Field(
        24 * 3600.0,
        gt=0,
        description="A finished job (done, failed, cancelled) and its "
        "files are deleted this long after it finished; its id then answers 410 job_expired.",
    )
    replica_id: str = Field(
        default_factory=default_replica_id,
        pattern=f"^{REPLICA_ID}$",
        description="This replica's name, the first part of every job id it gives (default: the host name, "
        "a pod's name under Kubernetes). Jobs live in the database of the replica that took them; another "
        "replica asked for one answers 421 job_on_another_replica naming it, instead of 404.",
    )
    jobs_max_queued: int = Field(64, ge=1, description="Jobs waiting to run, at most; more get 503 + Retry-After.")
    jobs_concurrency: int = Field(1, ge=1, description="Jobs run at once (each also takes a /predict admission slot).")
    job_max_frames: int = Field(
        1024,
        gt=0,
        description="Frames a job may ask for with max_frames (its default is "
        "DFS_MAX_FRAMES); still bounded by DFS_MAX_DECODE_PIXELS.",
    )
    job_timeout_s: float = Field(3600.0, gt=0, description="Limit on one job's analysis after its fetch.")

    @field_validator("ensemble_weights", mode="after")
    @classmethod
    def _check_ensemble_weights(cls, value: str) -> str:
        """Refuse a malformed list at start-up: read lazily, it left a healthy-looking service that
        answered 500 to every /predict."""
        for item in split_csv(value):
            name, sep, number = item.partition("=")
            try:
                weight = float(number)
            except ValueError:
                weight = math.nan
            if not sep or not name.strip() or not math.isfinite(weight) or weight < 0:
                raise DfsInputError(f"{item!r} is not name=weight with a finite weight >= 0 (e.g. dcl=0.6,ftcn=0.4)")
        return value

    @field_validator("model_versions", mode="after")
    @classmethod
    def _check_model_versions(cls, value: str) -> str:
        """Refuse a malformed pin at start-up, naming the entry."""
        for item in split_csv(value):
            name, sep, number = item.partition(":")
            if not sep or not name.strip() or not number.strip().isdigit() or int(number) < 1:
                raise DfsInputError(f"{item!r} is not model:version with a version >= 1 (e.g. ftcn:2)")
        return value

    @field_validator("api_keys", mode="after")
    @classmethod
    def _hash_api_keys(cls, value: SecretStr) -> SecretStr:
        """Replace each key by ``sha256:HEX`` as soon as it is read, so no settings object (cached,
        logged or copied) holds a key itself; an entry already in that form is kept as it is."""
        return SecretStr(",".join(hash_entries(split_csv(value.get_secret_value()))))

    # --- derived views ------------------------------------------------------------------------
    @property
    def api_key_hashes(self) -> list[str]:
        """DFS_API_KEYS as stored: one ``sha256:HEX`` per key."""
        return split_csv(self.api_keys.get_secret_value())

    @property
    def model_names(self) -> list[str]:
        return split_csv(self.models)

    @property
    def local_root_paths(self) -> list[Path]:
        return [Path(p).resolve() for p in split_csv(self.local_roots)]

    @property
    def jobs_db_path(self) -> Path:
        return self.jobs_db if self.jobs_db is not None else self.data_dir / "jobs.sqlite3"

    @property
    def model_version_pins(self) -> dict[str, int]:
        """DFS_MODEL_VERSIONS as {model: version}."""
        pins: dict[str, int] = {}
        for item in split_csv(self.model_versions):
            name, _, number = item.partition(":")
            pins[name.strip()] = int(number)
        return pins

    @property
    def ensemble_weight_map(self) -> dict[str, float]:
        weights: dict[str, float] = {}
        for item in split_csv(self.ensemble_weights):
            name, _, value = item.partition("=")
            weights[name.strip()] = float(value)
        return weights


def invalid_settings_message(error: ValidationError) -> str:
    """One line per bad DFS_* variable, named as the operator set it (not pydantic's field path)."""
    lines = [f"DFS_{'_'.join(str(part) for part in item['loc']).upper()}: {item['msg']}" for item in error.errors()]
    return "invalid settings:\n  " + "\n  ".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
