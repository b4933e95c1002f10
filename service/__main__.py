"""``python -m service``: serve the API with uvicorn, configured by DFS_* environment variables."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from service.config import Settings


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description=(
            "Serve the deepfake-detection API. Every option defaults to its DFS_* environment variable "
            "(see README: DFS_MODEL_REPOSITORY, DFS_MODELS, DFS_DEVICE, DFS_ALLOW_PRIVATE_URLS, ...)."
        ),
    )
    settings = Settings()
    parser.add_argument("--host", default=settings.host, help=f"bind address (DFS_HOST, now {settings.host})")
    parser.add_argument("--port", type=int, default=settings.port, help=f"port (DFS_PORT, now {settings.port})")
    parser.add_argument("--workers", type=int, default=settings.workers, help="worker processes (DFS_WORKERS)")
    parser.add_argument("--log-level", default=settings.log_level, choices=["debug", "info", "warning", "error"])
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
