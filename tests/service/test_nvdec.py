"""NVDEC decoding (PyNvVideoCodec) against PyAV on real H.264 MP4s: needs CUDA and PyNvVideoCodec.

Skipped, with the reason, on machines without them (CI has no GPU). On a GPU machine:
``pip install PyNvVideoCodec`` then ``pytest tests/service/test_nvdec.py -rs -s``.

H.264 decoding is bit-exact by the standard, so NVDEC's NV12 equals FFmpeg's YUV: NVDEC frames
must equal our own CPU conversion of PyAV's NV12 to 1 level (GPU vs CPU float rounding). Against
PyAV's RGB the difference is swscale's (fast-path rounding, chroma interpolation: measured on the
CPU, mean 0.6-1.2 levels), asserted as mean < 1.5.
"""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from service.config import Settings
from service.pipeline import decode_nvdec
from service.pipeline.crops import SamplingOptions, extract_crops, plan_crops
from service.pipeline.decode import iter_frames, probe
from service.pipeline.face_tracks import StageClock, find_tracks
from service.pipeline.faces import create_detector
from service.pipeline.gpu_color import matrix_for_tags, nv12_to_rgb
from service.pipeline.tensor_frames import choose_decoder, pyav_tensor_frames
from tests import media

USABLE, WHY = decode_nvdec.nvdec_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not USABLE, reason=f"NVDEC unavailable: {WHY}")]


def pyav_nv12_rgb(path: Path, count: int) -> list[np.ndarray]:
    """PyAV's decoded YUV as NV12, converted by our own code on the CPU with the stream's tags."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            if len(out) == count:
                break
            matrix, full = matrix_for_tags(frame.colorspace, frame.color_range, frame.format.name)
            nv12 = torch.from_numpy(frame.to_ndarray(format="nv12"))
            out.append(nv12_to_rgb(nv12, matrix=matrix, full_range=full).permute(1, 2, 0).numpy())
    return out


@pytest.fixture(scope="module")
def clips(videos: dict[str, Path], shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("nvdec")
    return {
        "written_h264": media.face_video(folder / "face.mp4", faces=2, frames=30),  # written with av, untagged
        "bt709_640x360": shared_data / "videos" / "facerec_real_short_hamilton_clip.mp4",
        "bt709_1080p": shared_data / "videos" / "wild_fake_Adele.mp4",
        "small_146x212": shared_data / "videos" / "wild_fake_Reagan.mp4",  # below 256 px, odd chroma width 73
    }


@pytest.mark.parametrize("name", ["written_h264", "bt709_640x360", "bt709_1080p", "small_146x212"])
def test_nvdec_frames_match_pyav(name: str, clips: dict[str, Path]) -> None:
    path, count = clips[name], 16
    nvdec = list(decode_nvdec.iter_frames(path, max_frames=count))
    pyav = list(iter_frames(path, max_frames=count))
    exact = pyav_nv12_rgb(path, count)
    assert [f.index for f in nvdec] == [f.index for f in pyav] == list(range(count))
    for gpu, cpu, reference in zip(nvdec, pyav, exact, strict=True):
        assert gpu.rgb.is_cuda and gpu.rgb.dtype == torch.uint8 and gpu.rgb.shape == (3, *cpu.rgb.shape[:2])
        frame = gpu.rgb.permute(1, 2, 0).cpu().numpy().astype(np.int16)
        same_yuv = np.abs(frame - reference)
        assert same_yuv.max() <= 1 and same_yuv.mean() < 0.01, (name, gpu.index, same_yuv.max(), same_yuv.mean())
        assert np.abs(frame - cpu.rgb).mean() < 1.5
        assert gpu.time_s == pytest.approx(cpu.time_s, abs=1e-3)


def test_nvdec_wanted_frames_and_downscale(clips: dict[str, Path]) -> None:
    path = clips["bt709_1080p"]
    wanted = {0, 3, 7, 30}
    gpu = list(decode_nvdec.iter_frames(path, max_frames=24, wanted=wanted, max_side=640))
    cpu = list(pyav_tensor_frames(path, max_frames=24, wanted=wanted, max_side=640))  # same torch resize
    assert [f.index for f in gpu] == [f.index for f in cpu] == [0, 3, 7]
    for g, c in zip(gpu, cpu, strict=True):
        assert g.rgb.shape == c.rgb.shape == (3, 360, 640)
        assert (g.rgb.cpu().int() - c.rgb.int()).abs().float().mean() < 1.5


def test_nvdec_pipeline_matches_pyav_pipeline(clips: dict[str, Path], shared_data: Path) -> None:
    """find_tracks + extract_crops with NVDEC frames vs the PyAV path, RetinaFace on the GPU."""
    settings = Settings(
        face_detector="retinaface",
        device="cuda",
        decoder="nvdec",
        retinaface_weights=shared_data / "weights" / "retinaface_mobilenet0.25_Final.pth",
    )
    assert choose_decoder(settings) == "nvdec"
    detector = create_detector(settings)
    path = clips["bt709_1080p"]
    info = probe(path, max_side=settings.max_video_side, max_duration_s=settings.max_duration_s)
    tracks, read = find_tracks(path, info, detector, settings, 32, StageClock())
    gpu_tracks, gpu_read = find_tracks(path, info, detector, settings, 32, StageClock(), decode_nvdec.iter_frames)
    assert gpu_read == read and len(gpu_tracks) == len(tracks) >= 1
    for mine, theirs in zip(gpu_tracks, tracks, strict=True):
        assert np.abs(mine.boxes - theirs.boxes).mean() < 3.0  # original 1080p pixels
    from tests.service.test_gpu_frames import crop_specs

    specs = crop_specs()
    items = plan_crops(tracks, specs, SamplingOptions(8, 2, 4))
    expected = extract_crops(path, items, specs, max_frames=read)
    crops = extract_crops(path, items, specs, max_frames=read, frames=decode_nvdec.iter_frames)
    for mine, theirs in zip(crops, expected, strict=True):
        assert np.abs(mine.astype(np.int16) - theirs).mean() < 1.5


def test_nvdec_refuses_what_it_cannot_decode(tmp_path: Path) -> None:
    path = tmp_path / "mpeg4.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(decode_nvdec.NvdecUnsupported, match="mpeg4"):
        next(decode_nvdec.iter_frames(path, max_frames=3))


def test_nvdec_throughput_report(clips: dict[str, Path]) -> None:
    """Not a benchmark gate: prints NVDEC + NV12->RGB frames/s at 1080p for the session log (-s)."""
    path = clips["bt709_1080p"]
    list(decode_nvdec.iter_frames(path, max_frames=8))  # warm up: CUDA context, decoder session
    torch.cuda.synchronize()
    started = time.perf_counter()
    count = sum(1 for _ in decode_nvdec.iter_frames(path, max_frames=120))
    torch.cuda.synchronize()
    print(f"\nNVDEC 1080p decode + NV12->RGB: {count / (time.perf_counter() - started):.0f} frames/s ({count} frames)")
