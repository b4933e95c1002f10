"""The training loop shared by all methods: data, devices, AMP, DDP, logs, validation, checkpoints.

Run under ``torchrun`` it trains data-parallel (DDP; NCCL on GPUs, Gloo on CPUs): each rank sees
its shard of the data, gradients are averaged, rank 0 validates, logs and writes checkpoints.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler
from tqdm import tqdm

from models.registry import create_model, read_checkpoint
from training.checkpoints import Optimizers, Progress, Scalers, resume, training_checkpoint, truncate_history
from training.data import TrackRecord, collate, load_index
from training.distributed import broadcast_from_first_rank, setup_distributed
from training.errors import TrainingFailure, TrainingInputError
from training.methods.base import Method, StepContext
from training.metrics import binary_metrics, per_video
from training.options import TrainingOptions

log = logging.getLogger("training")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def split_records(
    records: list[TrackRecord], val_fraction: float, seed: int
) -> tuple[list[TrackRecord], list[TrackRecord]]:
    """Use the dataset's val split when it has one; otherwise hold out whole identities."""
    val = [r for r in records if r.split == "val"]
    train = [r for r in records if r.split == "train"]
    if val or val_fraction <= 0:
        return train, val
    identities = sorted({r.identity for r in train})
    random.Random(seed).shuffle(identities)
    held = set(identities[: max(1, round(len(identities) * val_fraction))]) if len(identities) > 1 else set()
    return [r for r in train if r.identity not in held], [r for r in train if r.identity in held]


class EpochSampler(Sampler[int]):
    """This rank's shuffled order of an epoch, a function of (seed, epoch), less its first ``skip`` indices.

    Seeding by epoch makes a resumed run draw the order the original run drew; skipping lets a run
    resumed mid-epoch go on where it stopped instead of repeating (or skipping) the rest of that epoch.
    """

    def __init__(self, inner: RandomSampler | DistributedSampler, seed: int) -> None:
        self.inner = inner
        self.seed = seed
        self.skip = 0

    def start(self, epoch: int, skip: int = 0) -> None:
        if isinstance(self.inner, DistributedSampler):
            self.inner.set_epoch(epoch)  # seeds with its own seed + epoch
        else:
            self.inner.generator.manual_seed(self.seed * 1_000_003 + epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


def train_loader(train_set: Dataset, batch_size: int, workers: int, rank: int, world: int, seed: int) -> DataLoader:
    """Shuffled batches of this rank's shard.

    Workers are started afresh each epoch (not persistent): each holds a copy of the dataset, and
    only a copy made after :func:`start_epoch` draws that epoch's augmentations and blends.
    """
    if world > 1:
        inner: RandomSampler | DistributedSampler = DistributedSampler(
            train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed
        )
    else:
        inner = RandomSampler(train_set, generator=torch.Generator())
    # the loader's own generator seeds its workers, so starting an epoch draws nothing from the global
    # torch generator the methods use (mixup, SRM coin flips): a resumed run draws what the original did
    return DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=EpochSampler(inner, seed),
        num_workers=workers,
        collate_fn=collate,
        drop_last=len(train_set) >= batch_size * world,
        generator=torch.Generator().manual_seed(seed + rank),
    )


def start_epoch(loader: DataLoader, epoch: int, batches_done: int = 0) -> None:
    """Order and augmentations of ``epoch`` for a :func:`train_loader` loader, as a function of (seed,
    epoch), so a resumed run goes on exactly as an uninterrupted one would; ``batches_done`` batches of
    it are skipped (mid-epoch resume)."""
    loader.sampler.start(epoch, skip=batches_done * loader.batch_size)
    if hasattr(loader.dataset, "set_epoch"):  # datasets that augment or blend (training.data.EpochSeeded)
        loader.dataset.set_epoch(epoch)


@torch.no_grad()
def validate(method: Method, raw: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Frame/clip-level and video-level metrics of P(fake) on the validation set."""
    raw.eval()
    labels: list[int] = []
    scores: list[float] = []
    videos: list[str] = []
    tracks: list[str] = []
    for batch in loader:
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        logits = method.predict_logits(raw, batch)
        scores += torch.sigmoid(logits).cpu().tolist()
        labels += batch["label"].cpu().tolist()
        videos += batch["video"]
        tracks += batch["track"]
    raw.train()
    if not labels:
        return {}
    item = binary_metrics(labels, scores)
    video = binary_metrics(*per_video(videos, labels, scores, tracks))  # mean per track, max per video
    return {**{f"val/{k}": v for k, v in item.items()}, **{f"val_video/{k}": v for k, v in video.items()}}


def _load_init(model: nn.Module, method: Method, path: Path) -> None:
    """Initialise from a checkpoint (ours or the reference layout) through the model's own loader."""
    source = create_model(method.name, checkpoint=read_checkpoint(path), **method.model_kwargs())
    model.load_state_dict(source.state_dict())
    log.info("initialised %s from %s", method.name, path)


def _amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``auto`` is bf16 on CUDA and on a CPU with bf16 units, fp32 on other CPUs;
    an explicit choice applies anywhere.

    On a CPU, bf16 autocast only pays where the cores have bf16 units (AVX-512 BF16 / AMX): measured
    with ``bench/train.py --amp none,bf16`` on a 2-core AVX-512 BF16 EPYC, samples/s rose 1.88x for
    lib, 1.71x for advgame (EfficientNet-Lite0), 1.25x for pcl_i2g, 1.17x for dcl (MobileNetV2) and
    1.09x for FTCN (1/4 width); on an
    AVX2-only CPU it would be emulated, so ``auto`` stays fp32 there. fp16 autocast is CUDA's (a CPU
    has no fast fp16 path). The default bundle's recipe pins ``--amp none``: its models were trained
    in fp32, and a rerun on a bf16 CPU should reproduce them.
    """
    if not amp or amp == "none":
        return None
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" or cpu_has_bf16_units() else None
    if amp == "fp16" and device.type != "cuda":
        raise TrainingInputError("--amp fp16 needs CUDA; on a CPU use --amp bf16 or none")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bfloat16 natively (the kernel's ``avx512_bf16`` or ``amx_bf16`` flag).

    Read from /proc/cpuinfo: torch has no public query for it (oneDNN's own check is private API).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def _resume_path(resume_arg: str | None, output: Path) -> Path | None:
    if resume_arg == "auto":
        return output / "last.pt" if (output / "last.pt").is_file() else None
    return Path(resume_arg) if resume_arg else None


def _tensorboard(output: Path, enabled: bool):  # noqa: ANN202 - a SummaryWriter or None
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed; logging to metrics.jsonl only")
        return None
    return SummaryWriter(str(output / "tensorboard"))


@dataclass
class TrainingRun:
    """Everything one run holds while it trains: built once by :func:`prepare_run`, then stepped
    through its epochs (:func:`train_epoch`), validated and checkpointed (:func:`end_epoch`) and
    closed (:func:`finish_run`)."""

    method: Method
    options: TrainingOptions
    rank: int
    world: int
    device: torch.device
    loader: DataLoader
    val_loader: DataLoader | None
    raw_model: nn.Module  # the network itself: what is validated and saved
    model: nn.Module  # what the steps call (the method's training module, DDP-wrapped on several ranks)
    optimizers: Optimizers
    scalers: Scalers
    amp_dtype: torch.dtype | None
    progress: Progress
    log: StepLog

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def output(self) -> Path:
        return self.options.output

    def reached_max_steps(self) -> bool:
        return self.options.max_steps is not None and self.progress.step >= self.options.max_steps


@dataclass
class StepLog:
    """Where rank 0 records each optimiser step and each validation: ``metrics.jsonl`` and TensorBoard."""

    history: Path
    writer: Any = None  # a SummaryWriter, or None without --tensorboard

    def step(self, record: dict[str, Any], logs: dict[str, float]) -> None:
        with self.history.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in logs.items():
                self.writer.add_scalar(f"train/{key}", value, record["step"])
            self.writer.add_scalar("train/samples_per_s", record["samples_per_s"], record["step"])

    def validation(self, metrics: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def prepare_run(method: Method, options: TrainingOptions) -> TrainingRun:
    """Data, network, optimisers, AMP and DDP for ``options``, resumed from a checkpoint when asked."""
    rank, world, device = setup_distributed()
    seed_everything(options.seed + rank)
    output: Path = options.output
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)

    records = load_index(options.data)
    train_records, val_records = split_records(records, options.val_fraction, options.seed)
    if not train_records:
        raise TrainingInputError(f"no training tracks in {options.data}")
    train_set, val_set = method.datasets(train_records, val_records)
    if len(train_set) == 0:
        raise TrainingInputError(
            "the training set is empty (does it hold both classes, or --fakes blended with reals?)"
        )
    loader = train_loader(train_set, options.batch_size, options.workers, rank, world, options.seed)
    val_loader = (
        DataLoader(
            val_set,
            batch_size=options.batch_size,
            sampler=SequentialSampler(val_set),
            num_workers=options.workers,
            collate_fn=collate,
        )
        if len(val_set)
        else None
    )

    model = _build_model(method, options.init_seed)
    if options.init:
        _load_init(model, method, options.init)
    model.to(device)
    # channels_last also pays on a CPU (oneDNN): MobileNetV2 fwd+bwd 129 vs 177 ms/sample on 2 cores
    if options.channels_last and method.spec.kind == "frame":
        model = model.to(memory_format=torch.channels_last)
    optimizers = method.optimizers(model)
    method.optims = optimizers
    raw_model = model
    model = method.training_module(raw_model)
    if world > 1:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    amp_dtype = _amp_dtype(options.amp, device)
    scalers = {name: torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16) for name in optimizers}

    progress = Progress()
    resume_from = _resume_path(options.resume, output)
    if resume_from:
        progress = resume(resume_from, method, raw_model, optimizers, scalers, single_process=world == 1)
    broadcast_from_first_rank(method.replicated_state())  # DDP did this for the model when it wrapped it

    history = output / "metrics.jsonl"
    if rank == 0:
        truncate_history(history, progress.step)
    step_log = StepLog(history, _tensorboard(output, rank == 0 and options.tensorboard))
    return TrainingRun(
        method, options, rank, world, device, loader, val_loader, raw_model, model, optimizers, scalers, amp_dtype,
        progress, step_log,
    )  # fmt: skip


def _build_model(method: Method, init_seed: int | None) -> nn.Module:
    """The method's network; with ``init_seed``, drawn from that seed alone and leaving the run's generator as it was.

    Runs that differ only in ``--seed`` then start from identical weights (a model soup averages
    runs of one initialisation: heads drawn apart would average into a head neither run learned).
    """
    if init_seed is None:
        return method.build_model()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return method.build_model()


def train_epoch(run: TrainingRun, epoch: int) -> bool:
    """Step through epoch ``epoch`` from where the run stands; True when ``--max-steps`` stopped it."""
    method, options, progress = run.method, run.options, run.progress
    method.on_epoch_start(epoch)
    start_epoch(run.loader, epoch, progress.batches_done)
    for optimizer, _ in run.optimizers.values():  # a partial accumulation window left by the last epoch is dropped
        optimizer.zero_grad(set_to_none=True)
    scaler_of = {optimizer: run.scalers[name] for name, (optimizer, _) in run.optimizers.items()}
    progress_bar = tqdm(
        run.loader,
        desc=f"{method.name} epoch {epoch + 1}/{options.epochs}",
        disable=not run.is_main,
        dynamic_ncols=True,
        leave=False,
    )
    started, seen = time.perf_counter(), 0
    last_step_at = started  # per-step wall time: the first step of an epoch includes the loader's start
    for micro, batch in enumerate(progress_bar):
        batch = {k: (v.to(run.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        ctx = StepContext(
            scalers=scaler_of,
            accumulation=options.accumulate,
            micro_step=micro % options.accumulate,
            device=run.device,
            autocast_dtype=run.amp_dtype,
            grad_clip=options.grad_clip,
            world=run.world,
        )
        logs = method.training_step(run.model, batch, ctx)
        progress.batches_done += 1
        seen += len(batch["label"]) * run.world
        if not all(math.isfinite(v) for v in logs.values()):
            raise TrainingFailure(f"non-finite loss at step {progress.step}: {logs}")
        if not ctx.is_update_step:
            continue
        for _, scheduler in run.optimizers.values():
            if scheduler is not None:
                scheduler.step()
        progress.step += 1
        now = time.perf_counter()
        rate = seen / max(now - started, 1e-9)
        step_s, last_step_at = now - last_step_at, now
        progress_bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}", samples_s=f"{rate:.1f}")
        if run.is_main:
            record = {
                "step": progress.step,
                "epoch": epoch,
                **logs,
                "samples_per_s": rate,
                "step_s": step_s,
                "step_samples": len(batch["label"]) * run.world * options.accumulate,
            }
            if run.device.type == "cuda":
                record["gpu_peak_mb"] = torch.cuda.max_memory_allocated(run.device) / 2**20
            run.log.step(record, logs)
        if run.reached_max_steps():
            return True
    progress.epoch, progress.batches_done = epoch + 1, 0  # the epoch's batches ran out: it is complete
    return False


def end_epoch(run: TrainingRun, epoch: int) -> None:
    """Rank 0 validates, logs, and writes ``last.pt`` (and ``best.pt`` when validation AUC improved)."""
    if run.is_main:
        progress = run.progress
        metrics = validate(run.method, run.raw_model, run.val_loader, run.device) if run.val_loader is not None else {}
        auc = metrics.get("val_video/auc", metrics.get("val/auc", float("nan")))
        summary = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.endswith(("auc", "accuracy")))
        where = "done" if progress.batches_done == 0 else f"stopped after {progress.batches_done} batches"
        log.info("epoch %d %s (step %d)%s", epoch + 1, where, progress.step, f": {summary}" if summary else "")
        run.log.validation(metrics, progress.step)
        improved = math.isfinite(auc) and auc > progress.best
        if improved:
            progress.best = auc
        checkpoint = training_checkpoint(
            run.method, run.raw_model, run.optimizers, run.scalers, progress, metrics, run.options
        )
        checkpoint.save(run.output / "last.pt")
        if improved:
            checkpoint.save(run.output / "best.pt")
            log.info("new best validation AUC %.4f -> %s", auc, run.output / "best.pt")
    if run.world > 1:
        dist.barrier()


def finish_run(run: TrainingRun) -> Path:
    """Write the weights' fingerprints, leave the process group; returns the checkpoint to use."""
    output = run.output
    if run.is_main:
        final = output / "best.pt" if (output / "best.pt").is_file() else output / "last.pt"
        (output / "final_params.txt").write_text(_param_digest(run.raw_model, run.method))
    else:
        final = output / "last.pt"
    if run.world > 1:
        (output / f"params_rank{run.rank}.txt").write_text(_param_digest(run.raw_model, run.method))
        dist.barrier()
        dist.destroy_process_group()
    run.log.close()
    return final


def train(method: Method, options: TrainingOptions) -> Path:
    """Train ``method`` per ``options``; returns the path of the best (or last) checkpoint."""
    run = prepare_run(method, options)
    done = run.reached_max_steps()
    while run.progress.epoch < options.epochs and not done:
        epoch = run.progress.epoch
        done = train_epoch(run, epoch)
        end_epoch(run, epoch)
    return finish_run(run)


def _param_digest(model: nn.Module, method: Method) -> str:
    """Fingerprints of the weights and of the method's state beside them (ranks of a DDP run must agree)."""

    def digest(tensors: list[torch.Tensor]) -> str:
        return f"{sum(float(t.detach().double().sum()) for t in tensors):.10e}"

    return f"model {digest(list(model.parameters()))}\nmethod {digest(method.replicated_state())}\n"
