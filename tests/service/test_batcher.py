"""The cross-request batcher: requests share forward passes, a batch that fails (out of memory at that
size) is split and retried so no request fails, and an item that fails alone fails only its request."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from export.__main__ import export_model
from models import get_spec
from service.errors import InferenceFailed
from service.pipeline.engines import DynamicBatcher, OnnxEngine, normalize, on_host_cpu

SPEC = get_spec("advgame")


class FailingEngine:
    """A real ONNX engine that fails like a GPU out of memory on batches larger than ``limit``, and
    on any batch holding a constant (all-equal) crop, the stand-in for an input that breaks a model."""

    runtime = "onnxruntime:test"

    def __init__(self, engine: OnnxEngine, limit: int) -> None:
        self.engine, self.limit, self.batch_sizes = engine, limit, []

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(len(batch))
        if len(batch) > self.limit:
            raise RuntimeError(f"CUDA out of memory: tried a batch of {len(batch)}")
        if (batch.reshape(len(batch), -1).std(axis=1) == 0).any():
            raise RuntimeError("this item breaks the model")
        return self.engine.run(batch)


@pytest.fixture(scope="module")
def onnx_engine(tmp_path_factory: pytest.TempPathFactory) -> OnnxEngine:
    folder = export_model("advgame", tmp_path_factory.mktemp("repo"), random_init=True, parity_batches=[1])
    return OnnxEngine(Path(folder) / "model.onnx", device="cpu")


def crops(count: int, seed: int) -> list[np.ndarray]:
    shape = (count, SPEC.input_size, SPEC.input_size, 3)
    return list(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


async def infer_together(engine: FailingEngine, *requests: list[np.ndarray]) -> list[object]:
    """Submit every request at once (so they can share batches); results or exceptions in order."""
    batcher = DynamicBatcher("advgame", engine, SPEC, max_batch=8, max_wait_s=0.2)
    batcher.start()
    try:
        calls = [batcher.infer(f"request-{i}", items) for i, items in enumerate(requests)]
        return await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await batcher.stop()


def test_requests_share_a_batch_and_out_of_memory_splits_it_instead_of_failing(onnx_engine: OnnxEngine) -> None:
    engine = FailingEngine(onnx_engine, limit=2)
    first, second = crops(4, 0), crops(3, 1)
    got_first, got_second = asyncio.run(infer_together(engine, first, second))
    np.testing.assert_allclose(got_first, onnx_engine.run(normalize(SPEC, np.stack(first))), atol=1e-5)
    np.testing.assert_allclose(got_second, onnx_engine.run(normalize(SPEC, np.stack(second))), atol=1e-5)
    assert engine.batch_sizes[0] == 7, "both requests' crops go through one forward pass first"
    assert sum(size for size in engine.batch_sizes if size <= 2) == 7, "then halves until every item ran once"


def test_an_item_that_fails_alone_fails_only_its_request(onnx_engine: OnnxEngine) -> None:
    engine = FailingEngine(onnx_engine, limit=64)
    good = crops(3, 2)
    bad = crops(2, 3)
    bad[1] = np.full_like(bad[1], 255)
    got_good, got_bad = asyncio.run(infer_together(engine, good, bad))
    np.testing.assert_allclose(got_good, onnx_engine.run(normalize(SPEC, np.stack(good))), atol=1e-5)
    assert isinstance(got_bad, InferenceFailed)
    assert "model advgame failed" in str(got_bad) and "breaks the model" in str(got_bad)


class GatedEngine:
    """Blocks its first batch until released, and records every batch's size."""

    runtime = "test"

    def __init__(self) -> None:
        import threading

        self.release, self.batch_sizes = threading.Event(), []

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(len(batch))
        if len(self.batch_sizes) == 1:
            self.release.wait(10)
        return np.zeros(len(batch), np.float32)


def test_a_cancelled_requests_queued_crops_never_reach_the_engine() -> None:
    """While the engine is busy, request A queues 5 crops and is cancelled (its client left); B queues 2.
    The engine then sees B's 2 only: A's were dropped as they left the queue, taking no batch place."""
    engine = GatedEngine()

    async def scenario() -> list[int]:
        batcher = DynamicBatcher("advgame", engine, SPEC, max_batch=8, max_wait_s=0.05)
        batcher.start()
        try:
            busy = asyncio.ensure_future(batcher.infer("busy", crops(1, 4)))
            while not engine.batch_sizes:
                await asyncio.sleep(0.01)
            abandoned = asyncio.ensure_future(batcher.infer("abandoned", crops(5, 5)))
            await asyncio.sleep(0.05)
            abandoned.cancel()
            kept = asyncio.ensure_future(batcher.infer("kept", crops(2, 6)))
            await asyncio.sleep(0.05)
            engine.release.set()
            await asyncio.gather(busy, kept)
            assert abandoned.cancelled()
            return engine.batch_sizes
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == [1, 2]


def test_a_lone_request_does_not_wait_for_company(onnx_engine: OnnxEngine) -> None:
    """With every waiting request's crops already in the batch, the batcher runs it at once instead of
    holding it for ``max_wait_s`` (here 60 s: waiting would blow the 20 s bound by far)."""
    engine = FailingEngine(onnx_engine, limit=8)

    async def lone() -> np.ndarray:
        batcher = DynamicBatcher("advgame", engine, SPEC, max_batch=8, max_wait_s=60.0)
        batcher.start()
        try:
            return await asyncio.wait_for(batcher.infer("only", crops(3, 5)), timeout=20)
        finally:
            await batcher.stop()

    got = asyncio.run(lone())
    assert got.shape == (3,) and engine.batch_sizes == [3]


class TimedEngine:
    """A real ONNX engine that records when each of its runs started and ended."""

    def __init__(self, engine: OnnxEngine) -> None:
        self.engine, self.runtime, self.spans = engine, engine.runtime, []

    def run(self, batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        out = self.engine.run(batch)
        self.spans.append((started, time.perf_counter()))
        return out


def _overlaps(spans: list[tuple[float, float]]) -> int:
    return sum(later[0] < earlier[1] for earlier, later in itertools.pairwise(sorted(spans)))


def test_cpu_engines_taking_turns_never_compute_at_once(onnx_engine: OnnxEngine) -> None:
    """DFS_CPU_ENGINES_IN_TURN: two models' batchers that share a turn run their batches one after the
    other; the same two without it run side by side (each ONNX Runtime run releases the GIL)."""
    assert on_host_cpu(onnx_engine.runtime) and not on_host_cpu("triton:1@http://x") and not on_host_cpu("tensorrt:10")

    def run_both(turn: threading.Lock | None) -> list[tuple[float, float]]:
        engines = [TimedEngine(onnx_engine), TimedEngine(onnx_engine)]

        async def go() -> None:
            batchers = [
                DynamicBatcher(f"m{i}", engine, SPEC, max_batch=1, max_wait_s=0.0, turn=turn)
                for i, engine in enumerate(engines)
            ]
            for batcher in batchers:
                batcher.start()
            try:
                results = await asyncio.gather(*[b.infer("r", crops(6, seed=i)) for i, b in enumerate(batchers)])
                assert all(len(r) == 6 for r in results)
            finally:
                for batcher in batchers:
                    await batcher.stop()

        asyncio.run(go())
        return engines[0].spans + engines[1].spans

    in_turn = run_both(threading.Lock())
    assert len(in_turn) == 12 and _overlaps(in_turn) == 0
    side_by_side = run_both(None)
    assert len(side_by_side) == 12 and _overlaps(side_by_side) > 0
