"""The engines' Prometheus metrics (batching, inference time, Triton calls), all prefixed ``dfs_``.

Defined here, in the engines' layer, so the batcher and the Triton engine record them without
importing the app; :mod:`service.metrics` re-exports them with the rest.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)

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
INFERENCE_SECONDS = Histogram("dfs_inference_seconds", "Engine run time per batch.", ["model"], buckets=LATENCY_BUCKETS)

# DFS_RUNTIME=triton (service/pipeline/triton_engine.py): the forward pass is a call to Triton.
REMOTE_SECONDS = Histogram(
    "dfs_remote_inference_seconds",
    "Round trip of one inference request to Triton (DFS_RUNTIME=triton).",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
REMOTE_ERRORS = Counter(
    "dfs_remote_errors_total",
    "Failed calls to Triton after retries, by kind: unavailable, timeout, rejected (Triton refused the request).",
    ["model", "kind"],
)
REMOTE_RETRIES = Counter(
    "dfs_remote_retries_total", "Calls to Triton retried after a connection error or timeout.", ["model"]
)
REMOTE_READY = Gauge("dfs_remote_ready", "1 when Triton and this model were ready at the last health check.", ["model"])
