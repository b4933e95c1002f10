"""Prometheus metrics, all prefixed ``dfs_``. The Grafana dashboard in ``deploy/`` reads these names."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)

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

BATCH_SIZE = Histogram(
    "dfs_batch_size",
    "Items (clips or frames) per engine batch.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_REQUESTS = Histogram(
    "dfs_batch_requests",
    "Distinct requests whose items share one engine batch (>1 means cross-request batching).",
    ["model"],
    buckets=(1, 2, 3, 4, 8, 16, 32),
)
QUEUE_DEPTH = Gauge("dfs_queue_depth", "Items waiting in a model's batcher.", ["model"])
INFERENCE_SECONDS = Histogram(
    "dfs_inference_seconds", "Engine run time per batch.", ["model"], buckets=LATENCY_BUCKETS
)
FACES_FOUND = Histogram(
    "dfs_face_tracks", "Face tracks analysed per video.", buckets=(0, 1, 2, 3, 4, 6, 8, 16)
)
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

# DFS_RUNTIME=triton (service/pipeline/triton_engine.py): the forward pass is a call to Triton.
REMOTE_SECONDS = Histogram(
    "dfs_remote_inference_seconds", "Round trip of one inference request to Triton (DFS_RUNTIME=triton).", ["model"],
    buckets=LATENCY_BUCKETS,
)
REMOTE_ERRORS = Counter(
    "dfs_remote_errors_total",
    "Failed calls to Triton after retries, by kind: unavailable, timeout, rejected (Triton refused the request).",
    ["model", "kind"],
)
REMOTE_RETRIES = Counter("dfs_remote_retries_total", "Calls to Triton retried after a connection error or timeout.",
                         ["model"])
REMOTE_READY = Gauge("dfs_remote_ready", "1 when Triton and this model were ready at the last health check.", ["model"])
