"""Batched affine warps and downscales of frames held as torch tensors (any device).

The GPU frame path keeps decoded frames on the device, so the crops must be cut there too: this
module is ``cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT)`` and ``cv2.resize`` for a batch of
frames, in torch. It takes the same "frame pixels -> crop pixels" 2x3 matrices that
:mod:`service.pipeline.crops` plans (``CropItem.matrices``), so the plan does not care which path
cuts the crops.

Conventions, because this is where warps usually go wrong by half a pixel:
- OpenCV puts pixel (i, j)'s centre at coordinate (j, i) and ``warpAffine`` samples the source at
  ``M^-1 @ (x_dst, y_dst, 1)``.
- ``grid_sample(align_corners=False)`` reads normalised coordinates where -1 and +1 are the outer
  edges of the border pixels, so pixel centre x maps to ``(2x + 1) / W - 1``; ``affine_grid`` with
  ``align_corners=False`` generates exactly those normalised centres for the output pixels.
So the normalised theta is ``N_src @ M^-1 @ N_dst^-1`` (:func:`normalized_theta`), and the crop
agrees with OpenCV's to its fixed-point rounding (OpenCV quantises source positions to 1/32 px).
``padding_mode="zeros"`` treats taps outside the frame as 0, which is ``BORDER_CONSTANT`` with
value 0, including the blended edge band.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from service.pipeline.decode import scaled_size
from service.pipeline.failures import DfsInputError

# theta that sends every output pixel far outside the frame: padding slots come out as zeros
_OUTSIDE = torch.tensor([[0.0, 0.0, -4.0], [0.0, 0.0, -4.0]])


def normalized_theta(
    matrices: np.ndarray | torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]
) -> torch.Tensor:
    """OpenCV ``warpAffine`` matrices (M, 2, 3) (source px -> destination px) -> ``affine_grid`` thetas.

    ``affine_grid`` wants the inverse direction (output -> input) in normalised coordinates. The
    algebra runs in float64 so large frames and small crops lose nothing before the cast to float32.
    """
    m = torch.as_tensor(matrices).detach().to("cpu", torch.float64)  # tiny: solved on the host
    if m.ndim != 3 or m.shape[1:] != (2, 3):
        raise DfsInputError(f"expected matrices (M, 2, 3), got {tuple(m.shape)}")
    count = m.shape[0]
    full = torch.zeros(count, 3, 3, dtype=torch.float64)
    full[:, :2] = m
    full[:, 2, 2] = 1.0
    inverse = torch.linalg.inv(full)  # destination px -> source px
    src_h, src_w = src_hw
    dst_h, dst_w = dst_hw
    to_src_norm = torch.tensor(
        [[2.0 / src_w, 0.0, 1.0 / src_w - 1.0], [0.0, 2.0 / src_h, 1.0 / src_h - 1.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    from_dst_norm = torch.tensor(
        [[dst_w / 2.0, 0.0, (dst_w - 1) / 2.0], [0.0, dst_h / 2.0, (dst_h - 1) / 2.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    return (to_src_norm @ inverse @ from_dst_norm)[:, :2].float()


def warp_crops(
    frames: torch.Tensor,
    frame_of_crop: Sequence[int] | np.ndarray | torch.Tensor,
    matrices: np.ndarray | torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Cut ``size`` x ``size`` crops from a batch of frames: (N, 3, H, W) -> (M, S, S, 3) uint8.

    Crop k is ``frames[frame_of_crop[k]]`` warped by ``matrices[k]``, bilinear, zeros outside, like
    ``cv2.warpAffine(frame, matrices[k], (size, size))``. One ``affine_grid`` and one
    ``grid_sample`` do all crops: ``grid_sample`` pairs input n with grid n, so the crops of frame n
    are laid out below each other in frame n's output (K slots of S rows, K = most crops any frame
    has; unused slots sample outside the frame and are dropped). No frame is copied per crop, which
    matters when several faces share a 1080p frame. Frames may be uint8 or float 0..255.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise DfsInputError(f"expected frames (N, 3, H, W), got {tuple(frames.shape)}")
    device = frames.device
    if isinstance(frame_of_crop, torch.Tensor):
        frame_of_crop = frame_of_crop.cpu()
    owners = torch.as_tensor(np.asarray(frame_of_crop), dtype=torch.long).reshape(-1)
    count = int(owners.numel())
    if count == 0:
        return torch.zeros(0, size, size, 3, dtype=torch.uint8, device=device)
    if int(owners.min()) < 0 or int(owners.max()) >= frames.shape[0]:
        raise IndexError("frame_of_crop refers to a frame outside the batch")
    thetas = normalized_theta(matrices, (frames.shape[2], frames.shape[3]), (size, size))
    if thetas.shape[0] != count:
        raise DfsInputError(f"{count} crops but {thetas.shape[0]} matrices")

    # slot of each crop within its frame's column of crops
    order = torch.argsort(owners, stable=True)
    sorted_owners = owners[order]
    first_of_owner = torch.searchsorted(sorted_owners, sorted_owners, right=False)
    slot_sorted = torch.arange(count) - first_of_owner
    slots = torch.empty_like(slot_sorted)
    slots[order] = slot_sorted
    used = torch.unique(owners)  # frames no crop needs are not sampled at all
    row_of_frame = torch.full((frames.shape[0],), -1, dtype=torch.long)
    row_of_frame[used] = torch.arange(len(used))
    per_frame = int(slots.max()) + 1

    table = _OUTSIDE.expand(len(used), per_frame, 2, 3).clone()
    table[row_of_frame[owners], slots] = thetas
    thetas_all = table.reshape(-1, 2, 3).to(device)
    grid = F.affine_grid(thetas_all, [len(used) * per_frame, 1, size, size], align_corners=False)
    grid = grid.reshape(len(used), per_frame * size, size, 2)
    source = frames[used.to(device)].float()
    sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.reshape(len(used), 3, per_frame, size, size).permute(0, 2, 3, 4, 1)  # (U, K, S, S, 3)
    crops = sampled[row_of_frame[owners].to(device), slots.to(device)]
    return crops.round_().clamp_(0, 255).to(torch.uint8)


def resize_max_side(frames: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """Downscale (N, 3, H, W) or (3, H, W) frames so the longer side is at most ``max_side``.

    Same output size rule as the PyAV path (:func:`service.pipeline.decode.scaled_size`: even
    sizes), area-like antialiased bilinear (``antialias=True``) so a 1080p frame shrunk for the
    detector does not alias; uint8 in, uint8 out (the detector sees what the PyAV path gives it).
    Frames already small enough are returned as they are.
    """
    height, width = frames.shape[-2], frames.shape[-1]
    out_w, out_h = scaled_size(width, height, max_side)
    if (out_w, out_h) == (width, height):
        return frames
    batch = frames if frames.ndim == 4 else frames[None]
    resized = F.interpolate(batch.float(), size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False)
    resized = resized.round_().clamp_(0, 255)
    if frames.dtype == torch.uint8:
        resized = resized.to(torch.uint8)
    return resized if frames.ndim == 4 else resized[0]
