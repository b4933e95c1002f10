"""Prometheus metrics, all prefixed ``dfs_``. The Grafana dashboard in ``deploy/`` reads these names."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# The engines' own metrics live beside them (the engines' layer may not import the app); re-exported
# here, so this module still names every metric the service exposes.
from service.pipeline.engine_metrics import (  # noqa: F401
    BATCH_REQUESTS,
    BATCH_SIZE,
    INFERENCE_SECONDS,
    LATENCY_BUCKETS,
    QUEUE_DEPTH,
    REMOTE_ERRORS,
    REMOTE_READY,
    REMOTE_RETRIES,
    REMOTE_SECONDS,
)

REQUESTS = Counter("dfs_requests_total", "Finished API requests.", ["endpoint", "status"])
REQUEST_SECONDS = Histogram(
    "dfs_request_duration_seconds", "Wall time of API requests.", ["endpoint"], buckets=LATENCY_BUCKETS
)
STAGE_SECONDS = Histogram(
    "dfs_stage_duration_seconds",
    "Wall time per pipeline stage (fetch, decode, faces, crops, inference, total).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("dfs_requests_in_flight", "Videos being processed now.")
WAITING = Gauge("dfs_requests_waiting", "Videos admitted but waiting for a processing slot.")
REJECTED = Counter("dfs_requests_rejected_total", "Requests refused with 503 because the queue was full.")
CANCELLED = Counter(
    "dfs_requests_cancelled_total",
    "Requests whose work was cancelled before it finished, because the client disconnected.",
    ["endpoint"],
)

FACES_FOUND = Histogram("dfs_face_tracks", "Face tracks analysed per video.", buckets=(0, 1, 2, 3, 4, 6, 8, 16))
MODELS_LOADED = Gauge("dfs_models_loaded", "Engines loaded and serving.")
GPU_MEMORY_BYTES = Gauge("dfs_gpu_memory_bytes", "GPU memory allocated by this process.", ["device"])

# What the service answered: every JSON error once (counted where it is built, service/api/errors.py
# error_response), every scored video's verdict and score (service/api/routes/predict.py).
ERRORS = Counter("dfs_errors_total", "Error responses by error code (the JSON body's `error`).", ["code"])
PREDICTIONS = Counter("dfs_predictions_total", "Videos scored, by verdict.", ["prediction"])
for _verdict in ("FAKE", "REAL", "NO_FACE"):
    PREDICTIONS.labels(_verdict)  # each verdict is a series from the start, at 0
VIDEO_SCORE = Histogram(
    "dfs_video_score",
    "df_probability of scored videos (those with a face); drift here is the first sign of a shifted input mix.",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
)
