"""Exercise the project inside an empty network namespace; ``tests/test_offline.py`` traces it.

Run as ``python -m tests.offline_probe --work DIR`` under ``strace -f`` in ``unshare -n``: it serves a
synthetic face video from a loopback file server, starts the real service (``python -m service``,
the committed model bundle: ONNX Runtime sessions, BlazeFace through mediapipe, uvicorn, httpx),
sends one ``/predict``, builds and runs a timm network on torch the way training does, then lingers
past the moment onnxruntime's telemetry would fire (~20 s after the first session) before it stops.
Any connect to a non-loopback address during all of that is a leak; the test reads the trace.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
import threading
import time
from pathlib import Path

import httpx

from service.launcher import REPO_ROOT, start_service, stop_service
from tests import media


def serve_folder(folder: Path) -> str:
    """Serve ``folder`` on 127.0.0.1 from a daemon thread; returns the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def run_training_stack() -> None:
    """What training pulls in: timm builds a network (no pretrained download), torch runs a step."""
    import timm
    import torch

    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=2)
    loss = model(torch.randn(2, 3, 96, 96)).logsumexp(1).mean()
    loss.backward()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (video, service log)")
    parser.add_argument("--linger", type=float, default=30.0, help="seconds to stay up after /predict")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    video = media.face_video(args.work / "one_face.mp4", faces=1)
    base_url = serve_folder(video.parent)
    service = start_service(
        {
            "DFS_MODEL_REPOSITORY": str(REPO_ROOT / "model_repository"),
            "DFS_ALLOW_PRIVATE_URLS": "true",
            "DFS_DEVICE": "cpu",
            "DFS_MAX_FRAMES": "40",
        },
        args.work / "service.log",
    )
    try:
        with service.client() as client:
            response = client.post("/predict", json={"file_path": f"{base_url}/{video.name}"})
            print("predict:", response.status_code, response.json().get("prediction"), flush=True)
            if response.status_code != 200:
                print(response.text, file=sys.stderr)
                return 1
        run_training_stack()
        time.sleep(args.linger)
        print("healthcheck:", httpx.get(f"{service.base_url}/healthcheck", timeout=10).json(), flush=True)
    finally:
        stop_service(service)
    return 0


if __name__ == "__main__":
    sys.exit(main())
