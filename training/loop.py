"""The training loop shared by all methods: data, devices, AMP, DDP, logs, validation, checkpoints.

Run under ``torchrun`` it trains data-parallel (DDP; NCCL on GPUs, Gloo on CPUs): each rank sees
its shard of the data, gradients are averaged, rank 0 validates, logs and writes checkpoints.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
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
from training.data import TrackRecord, collate, load_index
from training.distributed import broadcast_from_first_rank, setup_distributed
from training.methods.base import Method, StepContext
from training.metrics import binary_metrics, per_video

log = logging.getLogger("training")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def split_records(records: list[TrackRecord], val_fraction: float, seed: int) -> tuple[list[TrackRecord], list[TrackRecord]]:
    """Use the dataset's val split when it has one; otherwise hold out whole identities."""
    val = [r for r in records if r.split == "val"]
    train = [r for r in records if r.split == "train"]
    if val or val_fraction <= 0:
        return train, val
    identities = sorted({r.identity for r in train})
    random.Random(seed).shuffle(identities)
    held = set(identities[: max(1, round(len(identities) * val_fraction))]) if len(identities) > 1 else set()
    return [r for r in train if r.identity not in held], [r for r in train if r.identity in held]


def train_loader(train_set: Dataset, batch_size: int, workers: int, rank: int, world: int, seed: int) -> DataLoader:
    """Shuffled batches of this rank's shard.

    Workers are started afresh each epoch (not persistent): each holds a copy of the dataset, and
    only a copy made after :func:`start_epoch` draws that epoch's augmentations and blends.
    """
    if world > 1:
        sampler: Sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    else:
        sampler = RandomSampler(train_set, generator=torch.Generator())
    return DataLoader(train_set, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                      drop_last=len(train_set) >= batch_size * world)


def start_epoch(loader: DataLoader, epoch: int, seed: int) -> None:
    """Order and augmentations of ``epoch`` as a function of (seed, epoch), so a resumed run goes on
    exactly as an uninterrupted one would."""
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
    elif isinstance(sampler, RandomSampler) and sampler.generator is not None:
        sampler.generator.manual_seed(seed * 1_000_003 + epoch)
    if hasattr(loader.dataset, "set_epoch"):  # datasets that augment or blend (training.data.EpochSeeded)
        loader.dataset.set_epoch(epoch)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def checkpoint_payload(method: Method, model: nn.Module, optimizers: dict, scaler: torch.amp.GradScaler,
                       epoch: int, step: int, best: float, metrics: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Everything ``python -m export`` and ``--resume`` need, in one file."""
    return {
        "model": method.name,
        "model_kwargs": method.model_kwargs(),
        "spec": method.spec.to_dict(),
        "state_dict": unwrap(model).state_dict(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
        "epoch": epoch,
        "step": step,
        "best_val_auc": best,
        "metrics": metrics,
        "optimizers": {n: o.state_dict() for n, (o, _) in optimizers.items()},
        "schedulers": {n: s.state_dict() for n, (_, s) in optimizers.items() if s is not None},
        "scaler": scaler.state_dict(),
        "extra": method.extra_state(),
        "command": getattr(args, "command", None),
    }


@torch.no_grad()
def validate(method: Method, raw: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Frame/clip-level and video-level metrics of P(fake) on the validation set."""
    raw.eval()
    labels: list[int] = []
    scores: list[float] = []
    videos: list[str] = []
    for batch in loader:
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        logits = method.predict_logits(raw, batch)
        scores += torch.sigmoid(logits).cpu().tolist()
        labels += batch["label"].cpu().tolist()
        videos += batch["video"]
    raw.train()
    if not labels:
        return {}
    item = binary_metrics(labels, scores)
    video = binary_metrics(*per_video(videos, labels, scores))
    return {**{f"val/{k}": v for k, v in item.items()}, **{f"val_video/{k}": v for k, v in video.items()}}


def _load_init(model: nn.Module, method: Method, path: Path) -> None:
    """Initialise from a checkpoint (ours or the reference layout) through the model's own loader."""
    source = create_model(method.name, checkpoint=read_checkpoint(path), **method.model_kwargs())
    model.load_state_dict(source.state_dict())
    log.info("initialised %s from %s", method.name, path)


def train(method: Method, args: argparse.Namespace) -> Path:
    """Train ``method`` per ``args``; returns the path of the best (or last) checkpoint."""
    rank, world, device = setup_distributed()
    is_main = rank == 0
    seed_everything(args.seed + rank)
    output: Path = args.output
    if is_main:
        output.mkdir(parents=True, exist_ok=True)

    records = load_index(args.data)
    train_records, val_records = split_records(records, args.val_fraction, args.seed)
    if not train_records:
        raise ValueError(f"no training tracks in {args.data}")
    train_set, val_set = method.datasets(train_records, val_records)
    if len(train_set) == 0:
        raise ValueError("the training set is empty (does it hold both classes, or --fakes blended with reals?)")
    loader = train_loader(train_set, args.batch_size, args.workers, rank, world, args.seed)
    val_loader = DataLoader(val_set, batch_size=args.batch_size, sampler=SequentialSampler(val_set),
                            num_workers=args.workers, collate_fn=collate) if len(val_set) else None

    model = method.build_model()
    if args.init:
        _load_init(model, method, args.init)
    model.to(device)
    if getattr(args, "channels_last", False) and device.type == "cuda" and method.spec.kind == "frame":
        model = model.to(memory_format=torch.channels_last)
    optimizers = method.optimizers(model)
    method.optims = optimizers
    raw_model = model
    model = method.training_module(raw_model)
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=True)
    amp_dtype = None
    if args.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if args.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    epoch = step = 0
    best = -math.inf
    resume = args.resume
    if resume == "auto":
        resume = output / "last.pt" if (output / "last.pt").is_file() else None
    if resume:
        state = torch.load(resume, map_location="cpu", weights_only=False)
        raw_model.load_state_dict(state["state_dict"])
        for name, (optimizer, scheduler) in optimizers.items():
            try:
                optimizer.load_state_dict(state["optimizers"][name])
            except (KeyError, ValueError) as exc:
                raise ValueError(
                    f"{resume}: optimiser {name!r} does not match this run's trainable parameters ({exc}); "
                    "resume with the same method options (e.g. --freeze-backbone) as the original run"
                ) from exc
            if scheduler is not None and name in state.get("schedulers", {}):
                scheduler.load_state_dict(state["schedulers"][name])
        scaler.load_state_dict(state["scaler"])
        method.load_extra_state(state.get("extra", {}))
        epoch, step, best = state["epoch"], state["step"], state.get("best_val_auc", -math.inf)
        log.info("resumed from %s at epoch %d, step %d", resume, epoch, step)

    broadcast_from_first_rank(method.replicated_state())  # DDP did this for the model when it wrapped it

    writer = None
    if is_main and args.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(output / "tensorboard"))
        except ImportError:
            log.warning("tensorboard is not installed; logging to metrics.jsonl only")

    history = output / "metrics.jsonl"
    metrics: dict[str, float] = {}
    done = args.max_steps is not None and step >= args.max_steps
    while epoch < args.epochs and not done:
        method.on_epoch_start(epoch)
        start_epoch(loader, epoch, args.seed)
        progress = tqdm(loader, desc=f"{method.name} epoch {epoch + 1}/{args.epochs}", disable=not is_main,
                        dynamic_ncols=True, leave=False)
        started, seen = time.perf_counter(), 0
        last_step_at = started  # per-step wall time: the first step of an epoch includes the loader's start
        for micro, batch in enumerate(progress):
            batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
            ctx = StepContext(scaler=scaler, accumulation=args.accumulate, micro_step=micro % args.accumulate,
                              device=device, autocast_dtype=amp_dtype, grad_clip=args.grad_clip, world=world)
            logs = method.training_step(model, batch, ctx)
            for _, scheduler in optimizers.values():
                if scheduler is not None and ctx.is_update_step:
                    scheduler.step()
            seen += len(batch["label"]) * world
            if not all(math.isfinite(v) for v in logs.values()):
                raise FloatingPointError(f"non-finite loss at step {step}: {logs}")
            if ctx.is_update_step:
                step += 1
                now = time.perf_counter()
                rate = seen / max(now - started, 1e-9)
                step_s, last_step_at = now - last_step_at, now
                progress.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}", samples_s=f"{rate:.1f}")
                if is_main:
                    record = {"step": step, "epoch": epoch, **logs, "samples_per_s": rate, "step_s": step_s,
                              "step_samples": len(batch["label"]) * world * args.accumulate}
                    if device.type == "cuda":
                        record["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                    with history.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    if writer is not None:
                        for key, value in logs.items():
                            writer.add_scalar(f"train/{key}", value, step)
                        writer.add_scalar("train/samples_per_s", rate, step)
                if args.max_steps is not None and step >= args.max_steps:
                    done = True
                    break
        epoch += 1
        if is_main:
            metrics = validate(method, raw_model, val_loader, device) if val_loader is not None else {}
            auc = metrics.get("val_video/auc", metrics.get("val/auc", float("nan")))
            summary = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.endswith(("auc", "accuracy")))
            log.info("epoch %d done (step %d)%s", epoch, step, f": {summary}" if summary else "")
            if writer is not None:
                for key, value in metrics.items():
                    writer.add_scalar(key, value, step)
            payload = checkpoint_payload(method, raw_model, optimizers, scaler, epoch, step, best, metrics, args)
            torch.save(payload, output / "last.pt")
            if math.isfinite(auc) and auc > best:
                best = auc
                payload["best_val_auc"] = best
                torch.save(payload, output / "best.pt")
                log.info("new best validation AUC %.4f -> %s", best, output / "best.pt")
        if world > 1:
            dist.barrier()
    if is_main:
        final = output / "best.pt" if (output / "best.pt").is_file() else output / "last.pt"
        (output / "final_params.txt").write_text(_param_digest(raw_model, method))
    else:
        final = output / "last.pt"
    if world > 1:
        (output / f"params_rank{rank}.txt").write_text(_param_digest(raw_model, method))
        dist.barrier()
        dist.destroy_process_group()
    if writer is not None:
        writer.close()
    return final


def _param_digest(model: nn.Module, method: Method) -> str:
    """Fingerprints of the weights and of the method's state beside them (ranks of a DDP run must agree)."""
    def digest(tensors: list[torch.Tensor]) -> str:
        return f"{sum(float(t.detach().double().sum()) for t in tensors):.10e}"

    return f"model {digest(list(model.parameters()))}\nmethod {digest(method.replicated_state())}\n"
