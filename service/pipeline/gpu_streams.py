"""One CUDA stream per worker thread, so different requests' GPU stages overlap on the device.

Requests run their decode/detect/crop stages in worker threads and every model's batcher has its
own thread. Torch launches all of them on the device's one default stream unless told otherwise,
which makes the GPU run one request's kernels strictly after another's even when both are small.
Inside :func:`thread_stream` a thread's torch work (and NVDEC, which decodes on torch's current
stream) goes to a stream of its own. Nothing crosses threads as a GPU tensor: tracks, crops and
logits reach other threads as host arrays, copied by blocking ``.cpu()`` calls, so no
cross-stream synchronisation is needed. On a CPU this is a no-op.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


@contextmanager
def thread_stream(device: object = "cuda") -> Iterator[None]:
    """Run the block on this thread's own CUDA stream (created once per thread); no-op off CUDA."""
    import torch

    kind = getattr(device, "type", str(device).split(":")[0])
    if kind != "cuda" or not torch.cuda.is_available():
        yield
        return
    streams: dict[str, torch.cuda.Stream] = _local.__dict__.setdefault("streams", {})
    key = str(device)
    if key not in streams:
        streams[key] = torch.cuda.Stream(device=torch.device(device) if key != "cuda" else None)
    stream = streams[key]
    with torch.cuda.stream(stream):
        yield
    stream.synchronize()  # what the block queued is done before the thread hands results on
