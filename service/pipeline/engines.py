"""Stage 6, engines: run exported models, batching crops across all concurrent requests.

Each loaded model gets one :class:`DynamicBatcher`. Requests submit their crops (uint8) and await
one fake logit per crop; a single worker per model gathers crops from whichever requests are
waiting — up to ``max_batch`` items or ``max_wait`` seconds after the first — normalises them and
runs the engine in its own thread. So two requests' clips share a forward pass, and a model never
runs two batches at once (which on one GPU would only contend). On a CPU the models also take turns
(``DFS_CPU_ENGINES_IN_TURN``): each engine's thread pool spans every core, so five models computing at
once only contend for them.

If a batch fails (e.g. out of memory at that size) it is split in halves and retried, down to single
items; only an item that fails alone fails its request, with an error naming the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from models.spec import ModelSpec
from service.pipeline import engine_metrics as metrics
from service.pipeline.failures import DfsFailure, InferenceFailed, Unavailable
from service.pipeline.gpu_streams import thread_stream

log = logging.getLogger(__name__)


class EngineUnavailable(DfsFailure):
    """The engine's server cannot serve now (unreachable, timed out, model not ready).

    The batcher fails the whole batch with a 503 at once instead of retrying it in halves: a smaller
    batch does not bring a server back (DFS_RUNTIME=triton, service/pipeline/triton_engine.py).
    """


class Engine(Protocol):
    runtime: str

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 batch -> fake logits (N,)."""
        ...


def normalize(spec: ModelSpec, crops: np.ndarray) -> np.ndarray:
    """uint8 crops ``(N, T, S, S, 3)`` (clip) or ``(N, S, S, 3)`` (frame) -> engine input layout."""
    scale = np.asarray(spec.std, dtype=np.float32) * 255.0
    shift = np.asarray(spec.mean, dtype=np.float32) * 255.0
    batch = (crops.astype(np.float32) - shift) / scale
    if spec.kind == "clip":
        return np.ascontiguousarray(batch.transpose(0, 4, 1, 2, 3))  # N,T,H,W,C -> N,C,T,H,W
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))  # N,H,W,C -> N,C,H,W


def onnx_providers(
    device: str,
    engine_cache: Path | None = None,
    *,
    gpu_memory_limit_mb: int = 0,
    available: set[str] | None = None,
) -> list[str | tuple[str, dict]]:
    """ONNX Runtime providers in preference order TensorRT -> CUDA -> CPU, as installed.

    ``gpu_memory_limit_mb`` caps the CUDA provider's arena for this session and makes it grow only by
    what is asked (instead of doubling), so GPU memory stays bounded however batch sizes vary.
    ``available`` defaults to what the installed onnxruntime offers.
    """
    if available is None:
        import onnxruntime as ort

        available = set(ort.get_available_providers())
    chosen: list[str | tuple[str, dict]] = []
    if device in ("auto", "cuda"):
        if "TensorrtExecutionProvider" in available:
            options: dict[str, object] = {}
            if engine_cache is not None:
                options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(engine_cache)}
            chosen.append(("TensorrtExecutionProvider", options))
        if "CUDAExecutionProvider" in available:
            cuda_options: dict[str, object] = {}
            if gpu_memory_limit_mb:
                cuda_options = {
                    "gpu_mem_limit": gpu_memory_limit_mb * 1024 * 1024,
                    "arena_extend_strategy": "kSameAsRequested",
                }
            chosen.append(("CUDAExecutionProvider", cuda_options))
        if device == "cuda" and not chosen:
            raise DfsFailure("DFS_DEVICE=cuda but onnxruntime has no CUDA/TensorRT provider (install onnxruntime-gpu)")
    chosen.append("CPUExecutionProvider")
    return chosen


ARENA_SAME_AS_REQUESTED = 1  # onnxruntime's ArenaExtendStrategy::kSameAsRequested (0 = kNextPowerOfTwo)
_shared_arena_lock = threading.Lock()
_shared_arena_registered = False


def use_shared_cpu_arena(options: object) -> None:
    """Have a session take its CPU memory from one process-wide arena that grows by what is asked.

    By default each ONNX Runtime session keeps an arena of its own that grows by doubling and never
    shrinks, so every model holds up to twice its largest batch's working memory for good, and five
    models hold the sum: 6.5 GB after frame batches of 64 on the 2-core CPU, 1.7 GB after batches
    of 16. One shared arena extended by the exact request (``kSameAsRequested``) held 2.7 GB and
    0.86 GB for the same batches, at the same speed (bench/memory.py): models run one batch at a
    time each, and what one frees another reuses.
    """
    import onnxruntime as ort

    global _shared_arena_registered
    with _shared_arena_lock:
        if not _shared_arena_registered:
            memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            # (max_mem, arena_extend_strategy, initial_chunk_size_bytes, max_dead_bytes_per_chunk); -1 = default
            ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, ARENA_SAME_AS_REQUESTED, -1, -1))
            _shared_arena_registered = True
    options.add_session_config_entry("session.use_env_allocators", "1")  # type: ignore[attr-defined]


class OnnxEngine:
    """An ONNX Runtime session with the input ``input`` and the output ``logit``."""

    def __init__(
        self,
        path: Path,
        *,
        device: str = "auto",
        threads: int = 0,
        engine_cache: Path | None = None,
        gpu_memory_limit_mb: int = 0,
        memory_arena: bool = True,
    ) -> None:
        """``memory_arena``: the sessions' CPU memory comes from one arena the whole process shares
        (:func:`use_shared_cpu_arena`); False turns the arena off, each run's activations going back
        to the allocator when it ends (less memory, slower; bench/memory.py measures both)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.enable_cpu_mem_arena = memory_arena
        providers = onnx_providers(device, engine_cache, gpu_memory_limit_mb=gpu_memory_limit_mb)
        if memory_arena and providers == ["CPUExecutionProvider"]:  # a GPU session's host memory stays its own
            use_shared_cpu_arena(options)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.runtime = f"onnxruntime:{self.session.get_providers()[0]}"

    def run(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        return np.asarray(out, dtype=np.float32).reshape(-1)


def on_host_cpu(runtime: str) -> bool:
    """Whether an engine (by its ``runtime`` name) computes on this machine's CPU cores, where the
    engines of several models contend for the same cores: ONNX Runtime's CPU provider, OpenVINO on the
    CPU, torch on the CPU. GPU, TensorRT and Triton engines compute elsewhere."""
    return runtime.startswith(("onnxruntime:CPUExecutionProvider", "openvino:CPU", "torch:cpu"))


def batch_bucket(size: int, max_batch: int) -> int:
    """The padded batch size: the next power of two, at most ``max_batch`` (and never below ``size``).

    A compiled model (torch.compile, CUDA graphs) specialises on the input shape; padding every batch
    to one of log2(max_batch) sizes bounds the recompilations and graph captures to that many.
    """
    bucket = 1 << max(0, (size - 1).bit_length())
    return max(size, min(bucket, max_batch))


class TorchEngine:
    """Eager PyTorch from a checkpoint: the reference the exported engines are measured against.

    fp32 by default; ``bf16`` autocast and channels-last on CUDA for the fast path measured in
    GPU.md. ``compile_mode`` wraps the network in ``torch.compile`` (``reduce-overhead`` adds CUDA
    graphs), with batches padded to power-of-two buckets so shapes stay few; GPU.md measured FTCN
    at 580 clips/s compiled in bf16 against 292 eager. Crops arrive normalised exactly as for the
    other engines.
    """

    def __init__(
        self,
        name: str,
        checkpoint: Path,
        *,
        device: str = "auto",
        dtype: str = "fp32",
        compile_mode: str = "off",
        compile_backend: str = "inductor",
        max_batch: int = 64,
    ) -> None:
        import torch

        from models import create_model, get_spec

        self._torch = torch
        self.device = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
        model = create_model(name, checkpoint=checkpoint).to(self.device).eval()
        # channels-last suits cuDNN's 2D convolutions (GPU.md: 1.5-2x with bf16 for the frame models);
        # FTCN's 3D ones gained ~1%, so clip models keep the default layout
        kind = (getattr(model, "spec", None) or get_spec(name)).kind
        self.memory_format = torch.channels_last if self.device.type == "cuda" and kind == "frame" else None
        if self.memory_format is not None:
            model = model.to(memory_format=self.memory_format)
        self.compiled = compile_mode != "off"
        if self.compiled:
            model = torch.compile(
                model, mode=None if compile_mode == "default" else compile_mode, dynamic=False, backend=compile_backend
            )
        self.model = model
        self.max_batch = max_batch
        self.autocast = dtype == "bf16"
        self.runtime = f"torch:{self.device.type}:{dtype}" + (f":compiled-{compile_mode}" if self.compiled else "")

    def warmup(self, input_shape: tuple[int, ...]) -> None:
        """Compile every bucket now (at load, while /healthcheck still says loading), not in a request."""
        for size in sorted({batch_bucket(n, self.max_batch) for n in range(1, self.max_batch + 1)}):
            self.run(np.zeros((size, *input_shape[1:]), np.float32))

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        size = len(batch)
        if self.compiled and (padded := batch_bucket(size, self.max_batch)) > size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], padded - size, axis=0)])
        tensor = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if self.memory_format is not None:
            tensor = tensor.contiguous(memory_format=self.memory_format)
        try:
            with (
                thread_stream(self.device),
                torch.inference_mode(),
                torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast),
            ):
                out = self.model(tensor)
        except torch.cuda.OutOfMemoryError:
            # hand the failed batch's blocks back before the batcher retries in halves
            torch.cuda.empty_cache()
            raise
        return out.float().cpu().numpy().reshape(-1)[:size]


@dataclass
class _Pending:
    request_id: str
    crop: np.ndarray
    future: asyncio.Future


class DynamicBatcher:
    """Cross-request batching for one model (see module docstring)."""

    def __init__(
        self,
        name: str,
        engine: Engine,
        spec: ModelSpec,
        *,
        max_batch: int,
        max_wait_s: float,
        turn: threading.Lock | None = None,
    ) -> None:
        """``turn``: a lock the engines sharing the host's cores hold while they compute (see
        :func:`on_host_cpu`), so one batch at a time uses every core; None runs whenever a batch is ready."""
        self.name = name
        self._turn = turn if turn is not None else contextlib.nullcontext()
        self.engine = engine
        self.spec = spec
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{name}")
        self._worker: asyncio.Task | None = None
        self._waiting: Counter[str] = Counter()  # request id -> its infer() calls awaiting results

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run_forever(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def infer(self, request_id: str, crops: list[np.ndarray]) -> np.ndarray:
        """Fake logits for ``crops`` (one per crop, same order)."""
        if not crops:
            return np.zeros(0, dtype=np.float32)
        loop = asyncio.get_running_loop()
        futures = []
        for crop in crops:
            future = loop.create_future()
            self._queue.put_nowait(_Pending(request_id, crop, future))
            futures.append(future)
        metrics.QUEUE_DEPTH.labels(self.name).set(self._queue.qsize())
        self._waiting[request_id] += 1
        try:
            return np.asarray(await asyncio.gather(*futures), dtype=np.float32)
        finally:
            self._waiting[request_id] -= 1
            if not self._waiting[request_id]:
                del self._waiting[request_id]
            for future in futures:  # a cancelled request leaves no work behind
                future.cancel()

    async def _collect(self) -> list[_Pending]:
        """The next batch: the first live item, then what arrives within ``max_wait_s``, up to ``max_batch``.

        The wait is skipped once the queue is empty and every request awaiting results has items in the
        batch: a request submits all its crops at once, so then only a request not yet arrived could
        join, and a lone request (the usual case on a CPU) never idles for it.

        Items of a cancelled request (its futures were cancelled by :meth:`infer`) are dropped as they
        are taken off the queue, so they neither reach the engine nor take a place in a batch.
        """
        loop = asyncio.get_running_loop()
        batch: list[_Pending] = []
        while not batch:
            batch = [p for p in [await self._queue.get()] if not p.future.done()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if self._queue.empty() and set(self._waiting) <= {p.request_id for p in batch}:
                break  # every waiting request is in this batch already: waiting could only add latency
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    pending = self._queue.get_nowait()
                else:
                    pending = await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if not pending.future.done():
                batch.append(pending)
        return batch

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [p for p in await self._collect() if not p.future.done()]  # cancelled while waiting to fill
            metrics.QUEUE_DEPTH.labels(self.name).set(self._queue.qsize())
            if not batch:
                continue
            metrics.BATCH_SIZE.labels(self.name).observe(len(batch))
            metrics.BATCH_REQUESTS.labels(self.name).observe(len({p.request_id for p in batch}))
            results = await loop.run_in_executor(self._executor, self._run_split, [p.crop for p in batch])
            for pending, result in zip(batch, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, EngineUnavailable):
                    pending.future.set_exception(
                        Unavailable(
                            f"model {self.name} is unavailable: {result}",
                            code="engine_unavailable",
                            retry_after_s=5,
                        )
                    )
                elif isinstance(result, Exception):
                    pending.future.set_exception(
                        InferenceFailed(
                            f"model {self.name} failed: {type(result).__name__}: {result}", code="inference_failed"
                        )
                    )
                else:
                    pending.future.set_result(result)

    def _run_split(self, crops: list[np.ndarray]) -> list[float | Exception]:
        """Run a batch; on failure retry its halves, so only items that fail alone fail."""
        started = time.perf_counter()
        try:
            batch = normalize(self.spec, np.stack(crops))  # outside the turn: numpy work of its own
            normalised = time.perf_counter()
            with self._turn:
                # the metric counts the batch's own work, not the wait for the turn
                turn_taken = time.perf_counter()
                logits = self.engine.run(batch)
            work_s = (normalised - started) + (time.perf_counter() - turn_taken)
            metrics.INFERENCE_SECONDS.labels(self.name).observe(work_s)
            if logits.shape != (len(crops),):
                raise DfsFailure(f"engine returned shape {logits.shape} for {len(crops)} inputs")
            return [float(v) for v in logits]
        except EngineUnavailable as exc:  # the server is away: every item gets the reason, nothing is split
            log.warning("model %s unavailable for a batch of %d: %s", self.name, len(crops), exc)
            return [exc] * len(crops)
        except Exception as exc:  # noqa: BLE001 - any engine error is retried smaller, then reported
            if len(crops) == 1:
                log.exception("model %s failed on a single item", self.name)
                return [exc]
            log.warning("model %s failed on a batch of %d (%s); retrying in halves", self.name, len(crops), exc)
            half = len(crops) // 2
            return self._run_split(crops[:half]) + self._run_split(crops[half:])
