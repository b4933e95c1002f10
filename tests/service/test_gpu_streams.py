"""Per-thread CUDA streams: a no-op on the CPU; on a GPU each worker thread gets its own stream and
results computed inside are complete when the block ends."""

from __future__ import annotations

import threading

import pytest
import torch

from service.pipeline.gpu_streams import thread_stream


def test_cpu_is_a_no_op() -> None:
    before = torch.ones(3)
    with thread_stream("cpu"):
        after = before * 2
    assert after.tolist() == [2.0, 2.0, 2.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_each_thread_gets_its_own_stream_and_finished_results() -> None:
    seen: dict[str, object] = {}
    sums: dict[str, float] = {}

    def work(name: str) -> None:
        with thread_stream("cuda"):
            seen[name] = torch.cuda.current_stream().cuda_stream
            x = torch.full((2048, 2048), 1.0, device="cuda")
            sums[name] = float((x @ x).sum().item())
        with thread_stream("cuda"):
            assert torch.cuda.current_stream().cuda_stream == seen[name]  # reused, not re-created

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    default = torch.cuda.default_stream().cuda_stream
    assert seen["a"] != seen["b"] and default not in (seen["a"], seen["b"])
    assert sums == {"a": 2048.0**3, "b": 2048.0**3}
