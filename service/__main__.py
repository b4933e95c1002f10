"""``python -m service``: serve the API with uvicorn, configured by DFS_* environment variables."""

from __future__ import annotations

import argparse
import logging

import uvicorn
from pydantic import ValidationError

from service.config import Settings, invalid_settings_message
from service.http_protocol import IMPORT_PATH as HTTP_PROTOCOL


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description=(
            "Serve the deepfake-detection API. Every option defaults to its DFS_* environment variable "
            "(see README: DFS_MODEL_REPOSITORY, DFS_MODELS, DFS_DEVICE, DFS_ALLOW_PRIVATE_URLS, ...)."
        ),
    )
    try:
        settings = Settings()
    except ValidationError as exc:
        parser.error(f"the service was not started: {invalid_settings_message(exc)}")
    parser.add_argument("--host", default=settings.host, help=f"bind address (DFS_HOST, now {settings.host})")
    parser.add_argument("--port", type=int, default=settings.port, help=f"port (DFS_PORT, now {settings.port})")
    parser.add_argument("--workers", type=int, default=settings.workers, help="worker processes (DFS_WORKERS)")
    parser.add_argument("--log-level", default=settings.log_level, choices=["debug", "info", "warning", "error"])
    args = parser.parse_args()
    if settings.metrics_port and (args.workers > 1 or settings.metrics_port == args.port):
        # each worker process keeps its own metrics, and only one of them could listen on the port
        parser.error(
            f"DFS_METRICS_PORT={settings.metrics_port} needs one worker and a port other than the API's "
            f"(now --workers {args.workers}, --port {args.port})"
        )
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        timeout_graceful_shutdown=30,
        # connection limits (service/config.py): h11 with a header deadline (DFS_HEADER_TIMEOUT_S) and
        # its header-size bound, idle keep-alive connections closed, and a cap on connections
        http=HTTP_PROTOCOL,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.keepalive_timeout_s,  # type: ignore[arg-type]  # call_later takes a float
        limit_concurrency=settings.max_connections,
    )


if __name__ == "__main__":
    main()
