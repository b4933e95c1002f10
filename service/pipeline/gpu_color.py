"""NV12 -> RGB in torch, on whatever device the NV12 tensor is on.

NVDEC hands decoded frames over as NV12 (PyNvVideoCodec 2.x exports them through DLPack as one
uint8 tensor of shape (1.5*H, W): H rows of luma, then H/2 rows of interleaved U,V at half width).
Converting them here, with torch ops, keeps frames on the GPU: no host round trip and no extra
library (CV-CUDA, NPP bindings) to install and pin.

The conversion must agree with the PyAV path, or the same video would give the models different
crops depending on the machine. PyAV (swscale) picks the matrix from the stream's colour tag and
falls back to BT.601 for untagged streams, limited ("MPEG", 16..235) range unless the stream says
full ("JPEG") range; :func:`matrix_for_tags` implements that rule and the decoder passes the tags
it read. Chroma is upsampled by repeating each U,V sample over its 2x2 block, as OpenCV's
``COLOR_YUV2RGB_NV12`` does (the test compares against it); swscale interpolates chroma a little
differently, which moves single pixels by a few levels at sharp colour edges, never the picture.
"""

from __future__ import annotations

from typing import Literal

import torch

from service.pipeline.failures import DfsInputError

Matrix = Literal["bt601", "bt709", "bt2020"]

# Luma weights (Kr, Kb) of each standard; Kg = 1 - Kr - Kb. Everything else follows from them.
_LUMA_WEIGHTS: dict[str, tuple[float, float]] = {
    "bt601": (0.299, 0.114),
    "bt709": (0.2126, 0.0722),
    "bt2020": (0.2627, 0.0593),
}

# FFmpeg's AVColorSpace codes as PyAV reports them (frame.colorspace / codec_context.colorspace).
_AVCOL_SPC = {1: "bt709", 5: "bt601", 6: "bt601", 9: "bt2020", 10: "bt2020"}
# AVColorRange: 1 = MPEG (limited), 2 = JPEG (full), 0 = unspecified (decoders treat it as limited).
_AVCOL_RANGE_JPEG = 2


def matrix_for_tags(colorspace: int | None, color_range: int | None, pix_fmt: str | None = None) -> tuple[Matrix, bool]:
    """(matrix, full_range) for a stream's FFmpeg colour tags, following swscale's defaults.

    Untagged or unknown -> BT.601, as swscale does; ``yuvj*`` pixel formats are full range even
    without a range tag (that is what the ``j`` means).
    """
    matrix: Matrix = _AVCOL_SPC.get(int(colorspace or 0), "bt601")  # type: ignore[assignment]
    full = int(color_range or 0) == _AVCOL_RANGE_JPEG or bool(pix_fmt and pix_fmt.startswith("yuvj"))
    return matrix, full


def yuv_to_rgb_coefficients(matrix: Matrix = "bt601", full_range: bool = False) -> tuple[torch.Tensor, float, float]:
    """(3x3 matrix M, luma offset, luma scale) with RGB = M @ [scale*(Y-off), U-128, V-128].

    Derived from the standard's luma weights rather than typed in, so BT.601/709/2020 cannot drift
    apart: R = Y' + 2(1-Kr) V', B = Y' + 2(1-Kb) U', G from Y' = Kr R + Kg G + Kb B. Limited range
    stretches luma 219 -> 255 and chroma 224 -> 255 (ITU-R BT.601 sections 2.5.3-2.5.4).
    """
    kr, kb = _LUMA_WEIGHTS[matrix]
    kg = 1.0 - kr - kb
    chroma = 1.0 if full_range else 255.0 / 224.0
    rv = 2.0 * (1.0 - kr)
    bu = 2.0 * (1.0 - kb)
    gu = -bu * kb / kg
    gv = -rv * kr / kg
    m = torch.tensor(
        [[1.0, 0.0, rv * chroma], [1.0, gu * chroma, gv * chroma], [1.0, bu * chroma, 0.0]], dtype=torch.float32
    )
    return m, (0.0 if full_range else 16.0), (1.0 if full_range else 255.0 / 219.0)


def split_nv12(nv12: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., 1.5H, W) uint8 NV12 -> Y (..., H, W), U and V (..., H/2, W/2), views where possible."""
    if nv12.dtype != torch.uint8:
        raise DfsInputError(f"NV12 must be uint8, got {nv12.dtype} (10-bit streams arrive as P016)")
    rows, width = nv12.shape[-2], nv12.shape[-1]
    if rows % 3 or width % 2:
        raise DfsInputError(f"NV12 needs (1.5*H, W) with even H and W, got {tuple(nv12.shape[-2:])}")
    height = rows * 2 // 3
    luma = nv12[..., :height, :]
    chroma = nv12[..., height:, :].unflatten(-1, (width // 2, 2))  # (..., H/2, W/2, 2) interleaved U,V
    return luma, chroma[..., 0], chroma[..., 1]


def nv12_to_rgb(
    nv12: torch.Tensor,
    *,
    matrix: Matrix = "bt601",
    full_range: bool = False,
    out_dtype: torch.dtype = torch.uint8,
    height: int | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """NV12 (1.5H, W) or a batch (N, 1.5H, W), uint8 -> RGB planes (3, H, W) / (N, 3, H, W).

    ``out_dtype`` uint8 rounds and clamps to 0..255 like every 8-bit converter; a float dtype
    returns the clamped 0..255 values unrounded (for a consumer that takes floats anyway).
    ``height``/``width`` crop to the display size when the decoder hands over a padded surface
    (e.g. 1088 coded rows for a 1080-row picture). Works on any device; one expression per
    channel, so the only large temporaries are the float planes.
    """
    luma, u, v = split_nv12(nv12)
    coeffs, offset, scale = yuv_to_rgb_coefficients(matrix, full_range)
    m = coeffs.tolist()  # Python floats: no per-frame host -> device copy of the matrix
    y = (luma.float() - offset).clamp_(min=0.0) * scale  # negative "blacker than black" clamps as in OpenCV
    # each chroma sample covers a 2x2 block of luma (co-sited nearest upsampling)
    cb = (u.float() - 128.0).repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    cr = (v.float() - 128.0).repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    channels = [y + m[c][1] * cb + m[c][2] * cr for c in range(3)]
    rgb = torch.stack(channels, dim=-3).clamp_(0.0, 255.0)
    if height is not None or width is not None:
        rgb = rgb[..., : height or rgb.shape[-2], : width or rgb.shape[-1]]
    if out_dtype == torch.uint8:
        return rgb.round_().to(torch.uint8)
    return rgb.to(out_dtype)
