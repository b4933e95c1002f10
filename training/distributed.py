"""Data-parallel plumbing: process group set-up, and keeping state outside DDP identical on every rank.

DDP averages the gradients of the module it wraps, and nothing else. Several methods also train
or update state beside that module: LIB's automatic loss weights, the adversarial game's blur
generators (stepped while the detector is frozen, so outside DDP's forward), DCL's hard-sample
queues and prototypes. Without the helpers here each rank would drift apart on those while the
detector stayed in sync. Every helper is a no-op in a single process, so methods call them
unconditionally; every helper is a collective, so all ranks must call it the same number of times.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment, or a single process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # Rank 0 validates and writes checkpoints while the others wait at a barrier: allow that to
        # take longer than the backends' default collective timeout (10 min for NCCL).
        dist.init_process_group(backend, timeout=timedelta(minutes=int(os.environ.get("TRAIN_DIST_TIMEOUT_MIN", 120))))
        rank, world = dist.get_rank(), dist.get_world_size()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def unwrap(model: nn.Module) -> nn.Module:
    """The module DDP wraps (``model`` itself outside DDP)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def broadcast_from_first_rank(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite ``tensors`` on every rank with rank 0's (in place), as DDP does for its module at start.

    Each rank initialises with its own seed, so state made outside DDP's module (generators, a key
    encoder copied before DDP synchronised the model) starts different on every rank without this.
    """
    if world_size() == 1:
        return
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


def average_gradients(params: Iterable[torch.Tensor], weight: float | None = None) -> None:
    """Replace each gradient by its average over ranks (in place; parameters without one count as zero).

    With ``weight`` (e.g. how many samples this rank's loss averaged over) the average is weighted,
    so ranks that saw few or none of a group do not dilute the others: the result is the gradient
    one process would have computed on all ranks' samples together.
    """
    world = world_size()
    if world == 1:
        return
    grads = []
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        grads.append(param.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    if weight is None:
        dist.all_reduce(flat)
        flat /= world
    else:
        total = torch.tensor([float(weight)], device=flat.device)
        flat *= float(weight)
        dist.all_reduce(flat)
        dist.all_reduce(total)
        flat /= total.clamp_min(1e-12)
    offset = 0
    for grad in grads:
        count = grad.numel()
        grad.copy_(flat[offset : offset + count].view_as(grad))
        offset += count


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of ``tensor`` concatenated in rank order (ranks may hold different row counts)."""
    world = world_size()
    if world == 1:
        return tensor
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts, strict=True)])
