"""The GPU frame path's torch code, checked on the CPU against OpenCV and PyAV.

Everything here runs without a GPU: NV12 conversion, warps and downscales are device-agnostic
torch code, and the end-to-end tests feed PyAV-decoded tensors (``pyav_tensor_frames``) through
the same detection/cropping code NVDEC frames take. The NVDEC decoder itself is tested in
``test_nvdec.py`` (skipped without CUDA and PyNvVideoCodec).

Measured on the test images (torch 2.14, OpenCV 4.x), asserted with a little headroom:
- NV12 -> RGB vs ``cv2.COLOR_YUV2RGB_NV12``: max 1 level, mean 0.04;
- warps vs ``cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT)``: max 1 level over the whole crop,
  border band included, mean < 0.001;
- downscale vs PyAV (swscale bilinear): mean 0.03-0.28 levels, 99th percentile <= 3.
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from skimage import data

from models.spec import FACE_TEMPLATE_256, CropRule, ModelSpec
from service.config import Settings
from service.pipeline.crops import SamplingOptions, box_matrix, extract_crops, plan_crops, similarity_matrix
from service.pipeline.decode import iter_frames, probe, scaled_size, upright
from service.pipeline.decode_nvdec import NvdecUnsupported, StreamFacts, check_supported, frame_to_rgb, stream_facts
from service.pipeline.face_tracks import StageClock, find_tracks
from service.pipeline.faces import create_detector, detect_tensor
from service.pipeline.gpu_color import matrix_for_tags, nv12_to_rgb, yuv_to_rgb_coefficients
from service.pipeline.gpu_warp import normalized_theta, resize_max_side, warp_crops
from service.pipeline.tensor_frames import (
    DecoderUnavailable,
    FrameSourceUnsupported,
    choose_decoder,
    pyav_tensor_frames,
    tensor_frame_source,
)

TEMPLATE = FACE_TEMPLATE_256


def rgb_to_nv12(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's BT.601 limited-range RGB -> I420, re-laid as NV12 (1.5H, W)."""
    height, width = rgb.shape[:2]
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    u = i420[height : height + height // 4].reshape(height // 2, width // 2)
    v = i420[height + height // 4 :].reshape(height // 2, width // 2)
    return np.concatenate([i420[:height], np.stack([u, v], axis=-1).reshape(height // 2, width)])


def hwc(planes: torch.Tensor) -> np.ndarray:
    return planes.permute(1, 2, 0).cpu().numpy()


def level_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


def first_nv12(path: Path) -> tuple[np.ndarray, av.VideoFrame]:
    with av.open(str(path)) as container:
        frame = next(container.decode(container.streams.video[0]))
        return frame.to_ndarray(format="nv12"), frame


# ------------------------------------------------------------------------------ NV12 -> RGB


def test_nv12_bt601_matches_opencv(shared_data: Path) -> None:
    """Tolerance: max 1 level, mean < 0.1 (OpenCV's fixed-point rounding), incl. out-of-gamut YUV."""
    video_nv12, _ = first_nv12(shared_data / "videos" / "wild_fake_Obama.mp4")
    noise = np.random.default_rng(0).integers(0, 256, (96, 128), dtype=np.uint8)  # any byte is valid NV12
    for nv12 in (rgb_to_nv12(data.astronaut()), video_nv12, noise):
        ours = hwc(nv12_to_rgb(torch.from_numpy(nv12)))
        reference = cv2.cvtColor(nv12, cv2.COLOR_YUV2RGB_NV12)
        assert ours.shape == reference.shape and ours.dtype == np.uint8
        diff = level_diff(ours, reference)
        assert diff.max() <= 1 and diff.mean() < 0.1, (diff.max(), diff.mean())


def test_nv12_batch_float_and_padded_surface() -> None:
    frames = [rgb_to_nv12(data.astronaut()[:256, :256]), rgb_to_nv12(data.astronaut()[256:, 256:])]
    batch = nv12_to_rgb(torch.from_numpy(np.stack(frames)))
    assert batch.shape == (2, 3, 256, 256) and batch.dtype == torch.uint8
    for k, nv12 in enumerate(frames):
        assert torch.equal(batch[k], nv12_to_rgb(torch.from_numpy(nv12)))
    as_float = nv12_to_rgb(torch.from_numpy(frames[0]), out_dtype=torch.float32)
    assert as_float.dtype == torch.float32 and (as_float - batch[0].float()).abs().max() <= 0.5
    # a surface padded to 16 rows (coded 272 for a 262-row picture) is cropped to the display size
    picture = data.astronaut()[:262, :200]
    padded = np.pad(picture, ((0, 10), (0, 0), (0, 0)), mode="edge")
    cropped = nv12_to_rgb(torch.from_numpy(rgb_to_nv12(padded)), height=262, width=200)
    assert cropped.shape == (3, 262, 200)
    with pytest.raises(ValueError, match="uint8"):
        nv12_to_rgb(torch.zeros(6, 4, dtype=torch.int16))


def test_bt709_and_full_range_follow_the_published_equations() -> None:
    """Against the standards' rounded coefficients written out by hand (independent of Kr/Kb)."""
    rng = np.random.default_rng(1)
    y, u, v = (rng.uniform(0, 255, 1000) for _ in range(3))

    def apply(matrix: str, full: bool) -> np.ndarray:
        m, offset, scale = yuv_to_rgb_coefficients(matrix, full)  # type: ignore[arg-type]
        return (m.double().numpy() @ np.stack([(y - offset) * scale, u - 128, v - 128])).T

    ys, cb, cr = 1.164 * (y - 16), u - 128, v - 128  # ITU-R BT.709 limited range
    bt709 = np.stack([ys + 1.793 * cr, ys - 0.213 * cb - 0.533 * cr, ys + 2.112 * cb], axis=1)
    assert np.abs(apply("bt709", False) - bt709).max() < 0.3
    jpeg = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=1)  # JFIF
    assert np.abs(apply("bt601", True) - jpeg).max() < 0.05


def test_colour_tags_choose_the_matrix_pyav_uses(shared_data: Path) -> None:
    """PyAV converts with the matrix and range the frame is tagged with (BT.601 when untagged); so do we.

    Flat saturated patches make the choice unambiguous (BT.601 and BT.709 differ by 10+ levels
    there, and chroma interpolation plays no part). What remains is swscale's fast-path rounding:
    it maps Y=235 to 253, not 255, so PyAV's frames are up to 3 levels darker than the exact
    conversion (ours and OpenCV's) near white.
    """
    assert matrix_for_tags(None, None) == ("bt601", False)
    assert matrix_for_tags(1, 1) == ("bt709", False)
    assert matrix_for_tags(5, 2) == ("bt601", True)
    assert matrix_for_tags(2, 0, "yuvj420p") == ("bt601", True)
    patches = np.zeros((96, 256), np.uint8)  # four 64x64 NV12 patches side by side
    for k, (y, u, v) in enumerate([(100, 90, 200), (180, 200, 60), (60, 160, 100), (150, 60, 60)]):
        patches[:64, 64 * k : 64 * (k + 1)] = y
        patches[64:, 64 * k : 64 * (k + 1) : 2] = u
        patches[64:, 64 * k + 1 : 64 * (k + 1) : 2] = v
    for colorspace, color_range in ((2, 0), (1, 1), (5, 1), (1, 2)):
        frame = av.VideoFrame.from_ndarray(patches, format="nv12")
        frame.colorspace, frame.color_range = colorspace, color_range
        pyav_rgb = frame.to_ndarray(format="rgb24")[24:40, 8::64]  # patch centres
        matrix, full = matrix_for_tags(colorspace, color_range)
        ours = hwc(nv12_to_rgb(torch.from_numpy(patches), matrix=matrix, full_range=full))[24:40, 8::64]
        other = "bt601" if matrix == "bt709" else "bt709"
        wrong = hwc(nv12_to_rgb(torch.from_numpy(patches), matrix=other, full_range=full))[24:40, 8::64]
        assert level_diff(ours, pyav_rgb).max() <= 3, (colorspace, color_range, level_diff(ours, pyav_rgb).max())
        assert level_diff(wrong, pyav_rgb).max() >= 10
    # and real files carry the tags: a BT.709 clip, which PyAV indeed converts with BT.709
    _, frame = first_nv12(shared_data / "videos" / "facerec_real_short_hamilton_clip.mp4")
    assert matrix_for_tags(frame.colorspace, frame.color_range, frame.format.name) == ("bt709", False)
    explicit = frame.reformat(format="rgb24", src_colorspace="ITU709").to_ndarray()
    assert np.array_equal(explicit, frame.to_ndarray(format="rgb24"))


# ------------------------------------------------------------------------------ warps


def random_similarity(rng: np.random.Generator) -> np.ndarray:
    angle, scale = rng.uniform(-0.7, 0.7), rng.uniform(0.3, 1.8)
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, rng.uniform(-120, 160)], [s, c, rng.uniform(-120, 160)]])


def source_coordinates(matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    inverse = cv2.invertAffineTransform(matrix)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    return (
        inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2],
        inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2],
    )


def test_warp_matches_opencv_on_real_images() -> None:
    """Rotation+scale+shift, landmark alignment and box crops from two frames in one call.

    Tolerance: max 1 level inside the frame, max 2 levels in the border band (half-covered pixels
    blended with the zero border), mean < 0.01; pixels whose source lies outside the frame are 0.
    """
    frames = [data.astronaut(), cv2.resize(data.chelsea(), (512, 512))]
    rng = np.random.default_rng(0)
    template = np.array(TEMPLATE) * 224 / 256
    # five landmarks of the astronaut's face (eyes, nose, mouth corners), as a detector gives them
    marks = np.array([[214.0, 104], [262, 104], [240, 133], [218, 162], [258, 162]])
    matrices = [random_similarity(rng) for _ in range(6)]
    matrices += [similarity_matrix(marks[None], template), box_matrix(np.array([180.0, 60, 330, 260]), 1.3, 224)]
    matrices += [box_matrix(np.array([-60.0, -40, 90, 110]), 1.3, 224)]  # reaches past the top-left corner
    owners = [k % 2 for k in range(len(matrices))]
    batch = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    crops = warp_crops(batch, owners, np.stack(matrices), 224)
    assert crops.shape == (len(matrices), 224, 224, 3) and crops.dtype == torch.uint8
    for k, matrix in enumerate(matrices):
        reference = cv2.warpAffine(
            frames[owners[k]], matrix, (224, 224), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        diff = level_diff(crops[k].numpy(), reference)
        sx, sy = source_coordinates(matrix, 224)
        inside = (sx >= 0) & (sx <= 511) & (sy >= 0) & (sy <= 511)
        outside = (sx < -1) | (sx > 512) | (sy < -1) | (sy > 512)
        assert inside.any()
        assert diff[inside].max() <= 1 and diff.max() <= 2 and diff.mean() < 0.01, (k, diff.max(), diff.mean())
        assert (crops[k].numpy()[outside] == 0).all()
    assert (crops[-1].numpy()[:20, :20] == 0).all()  # the corner beyond the frame is black


def test_warp_groups_crops_by_frame_and_keeps_order() -> None:
    frames = torch.from_numpy(
        np.stack([data.astronaut()[:256, :256], data.astronaut()[256:, 256:], data.astronaut()[:256, 256:]])
    ).permute(0, 3, 1, 2)
    rng = np.random.default_rng(3)
    owners = [2, 0, 2, 2, 0]  # frame 1 unused, frame 2 has three crops, out of order
    matrices = np.stack([random_similarity(rng) * [[0.5], [0.5]] for _ in owners])
    crops = warp_crops(frames, owners, matrices, 64)
    for k, owner in enumerate(owners):
        alone = warp_crops(frames[owner : owner + 1], [0], matrices[k : k + 1], 64)
        assert torch.equal(crops[k], alone[0])
    assert warp_crops(frames, [], np.zeros((0, 2, 3)), 64).shape == (0, 64, 64, 3)
    with pytest.raises(IndexError):
        warp_crops(frames, [3], matrices[:1], 64)
    identity = normalized_theta(np.array([[[1.0, 0, 0], [0, 1, 0]]]), (64, 64), (64, 64))
    assert torch.allclose(identity, torch.tensor([[[1.0, 0, 0], [0, 1, 0]]]), atol=1e-6)


def test_resize_matches_pyav_downscale() -> None:
    """Same size rule as the PyAV path; antialiased bilinear vs swscale: mean < 0.5, p99 <= 3 levels."""
    for image in (data.astronaut(), cv2.resize(data.chelsea(), (1280, 720))):
        planes = torch.from_numpy(image).permute(2, 0, 1)
        for side in (200, 256, 640):
            small = resize_max_side(planes, side)
            width, height = scaled_size(image.shape[1], image.shape[0], side)
            assert small.shape == (3, height, width) and small.dtype == torch.uint8
            source = av.VideoFrame.from_ndarray(image, format="rgb24")
            reference = source.reformat(width=width, height=height).to_ndarray()
            diff = level_diff(hwc(small), reference)
            assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 3, (side, diff.mean())
    assert resize_max_side(planes, None) is planes
    assert resize_max_side(planes[None], 128).shape == (1, 3, 72, 128)


# ------------------------------------------------------------------------------ NVDEC helpers (CPU parts)


def test_frame_to_rgb_crops_rotates_and_scales_like_pyav() -> None:
    picture = data.astronaut()[:200, :300]
    padded = np.pad(picture, ((0, 8), (0, 4), (0, 0)), mode="edge")  # a coded surface larger than the picture
    nv12 = torch.from_numpy(rgb_to_nv12(padded))
    for rotation in (0, 90, 180, 270):
        facts = StreamFacts("h264", "yuv420p", 300, 200, None, rotation, "bt601", False)
        rgb = frame_to_rgb(nv12, facts, max_side=None)
        reference = upright(cv2.cvtColor(rgb_to_nv12(padded), cv2.COLOR_YUV2RGB_NV12)[:200, :300], rotation)
        assert hwc(rgb).shape == reference.shape and level_diff(hwc(rgb), reference).max() <= 1
    facts = StreamFacts("h264", "yuv420p", 300, 200, None, 90, "bt601", False)
    assert frame_to_rgb(nv12, facts, max_side=150).shape == (3, 150, 100)  # scaled, then turned upright
    with pytest.raises(NvdecUnsupported):
        frame_to_rgb(nv12.to(torch.int16), facts, None)


def test_stream_facts_and_supported_streams(shared_data: Path, videos: dict[str, Path]) -> None:
    facts = stream_facts(videos["one_face"])
    described = (facts.codec, facts.pix_fmt, facts.rotation, facts.matrix, facts.full_range)
    assert described == ("h264", "yuv420p", 0, "bt601", False)
    info = probe(videos["one_face"], max_side=8192, max_duration_s=60)
    assert (facts.width, facts.height) == (info.width, info.height) and facts.time_base is not None
    check_supported(facts)
    assert stream_facts(shared_data / "videos" / "facerec_real_short_hamilton_clip.mp4").matrix == "bt709"
    for codec, pix_fmt in (("mpeg4", "yuv420p"), ("h264", "yuv420p10le"), ("hevc", "yuv444p")):
        with pytest.raises(NvdecUnsupported):
            check_supported(StreamFacts(codec, pix_fmt, 64, 64, None, 0, "bt601", False))


# ------------------------------------------------------------------------------ decoder choice


def test_decoder_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.pipeline import decode_nvdec, faces

    assert choose_decoder(Settings(decoder="pyav")) == "pyav"
    assert tensor_frame_source("pyav") is None and tensor_frame_source("nvdec") is decode_nvdec.iter_frames
    monkeypatch.setattr(decode_nvdec, "nvdec_available", lambda: (False, "torch sees no CUDA device"))
    assert choose_decoder(Settings(decoder="auto")) == "pyav"
    with pytest.raises(DecoderUnavailable, match="DFS_DECODER=nvdec.*no CUDA"):
        choose_decoder(Settings(decoder="nvdec"))
    monkeypatch.setattr(decode_nvdec, "nvdec_available", lambda: (True, "PyNvVideoCodec 2.2.4 on a GPU"))
    assert choose_decoder(Settings(decoder="auto", device="cpu")) == "pyav"
    with pytest.raises(DecoderUnavailable, match="DFS_DEVICE=cuda"):
        choose_decoder(Settings(decoder="nvdec", device="cpu"))
    monkeypatch.setattr(faces, "resolve_device", lambda setting: "cuda")
    assert choose_decoder(Settings(decoder="auto")) == "nvdec"
    assert choose_decoder(Settings(decoder="nvdec")) == "nvdec"


def test_explicit_nvdec_without_it_fails_start_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import asyncio

    from service.pipeline import decode_nvdec
    from service.serving import Serving

    monkeypatch.setattr(decode_nvdec, "nvdec_available", lambda: (False, "PyNvVideoCodec is not installed"))
    state = Serving(Settings(decoder="nvdec", model_repository=tmp_path, face_detector="blazeface"))
    asyncio.run(state.load())
    assert not state.ready and "DFS_DECODER=nvdec" in state.reason and "not installed" in state.reason


# ------------------------------------------------------------------------------ the torch path end to end


@pytest.fixture(scope="module")
def retinaface_settings(shared_data: Path) -> Settings:
    return Settings(
        face_detector="retinaface",
        device="cpu",
        decoder="pyav",
        retinaface_weights=shared_data / "weights" / "retinaface_mobilenet0.25_Final.pth",
    )


def test_detectors_take_tensor_batches(retinaface_settings: Settings, videos: dict[str, Path]) -> None:
    frames = [f.rgb for f in iter_frames(videos["two_faces"], max_frames=3)]
    batch = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    for settings in (retinaface_settings, Settings(face_detector="blazeface")):
        detector = create_detector(settings)
        expected = detector.detect(frames)
        for found in (detect_tensor(detector, batch), detect_tensor(detector, batch.float())):
            assert [len(f) for f in found] == [2, 2, 2]
            for mine, theirs in zip(found, expected, strict=True):
                for a, b in zip(mine, theirs, strict=True):
                    assert np.allclose(a.box, b.box, atol=1e-3) and np.allclose(a.landmarks, b.landmarks, atol=1e-3)


def crop_specs() -> dict[str, ModelSpec]:
    return {
        "clipper": ModelSpec(
            "clipper",
            "clip",
            112,
            (0.5,) * 3,
            (0.5,) * 3,
            CropRule("align", template=TEMPLATE, template_size=256),
            num_frames=8,
        ),
        "framer": ModelSpec("framer", "frame", 64, (0.5,) * 3, (0.5,) * 3, CropRule("box", scale=1.3)),
    }


@pytest.mark.parametrize("video", ["two_faces", "wild_fake_Obama"])
def test_torch_path_end_to_end_matches_the_opencv_path(
    video: str, retinaface_settings: Settings, videos: dict[str, Path], shared_data: Path
) -> None:
    """find_tracks + extract_crops on tensor frames vs the PyAV/OpenCV path.

    Detection runs at 256 px so the torch downscale is exercised: swscale vs torch resizing moves
    detections a little (measured: boxes 0.05-0.08 px apart on average, 0.5 px at most), and crops
    cut by torch from the same plan match OpenCV's to 1 level (mean ~1e-4); asserted: boxes < 0.5 px
    on average, crops max 2 levels, mean < 0.01.
    """
    path = videos[video] if video in videos else shared_data / "videos" / f"{video}.mp4"
    settings = retinaface_settings.model_copy(update={"detection_max_side": 256, "detect_every": 2})
    detector = create_detector(settings)
    info = probe(path, max_side=settings.max_video_side, max_duration_s=settings.max_duration_s)
    tracks, read = find_tracks(path, info, detector, settings, 24, StageClock())
    clock = StageClock()
    tensor_tracks, tensor_read = find_tracks(path, info, detector, settings, 24, clock, pyav_tensor_frames)
    assert tensor_read == read == 23 and len(tensor_tracks) == len(tracks) >= 1  # last detected frame + 1
    assert clock.ms["faces"] > 0 and "decode" in clock.ms
    for mine, theirs in zip(tensor_tracks, tracks, strict=True):
        assert (mine.first_frame, mine.last_frame) == (theirs.first_frame, theirs.last_frame)
        assert np.abs(mine.boxes - theirs.boxes).mean() < 0.5

    specs = crop_specs()
    items = plan_crops(tracks, specs, SamplingOptions(clip_stride=8, max_clips_per_track=2, frames_per_track=3))
    expected = extract_crops(path, items, specs, max_frames=read)
    crops = extract_crops(path, items, specs, max_frames=read, frames=pyav_tensor_frames, warp_chunk=5)
    assert len(crops) == len(expected) == len(items)
    for mine, theirs in zip(crops, expected, strict=True):
        assert mine.shape == theirs.shape and mine.dtype == np.uint8
        diff = level_diff(mine, theirs)
        assert diff.max() <= 2 and diff.mean() < 0.01, (diff.max(), diff.mean())


def test_unsupported_file_falls_back_to_pyav(videos: dict[str, Path]) -> None:
    def refusing(path: Path, **kwargs: object):  # noqa: ANN202 - a TensorFrameSource
        raise FrameSourceUnsupported("codec not for this decoder")
        yield  # pragma: no cover - makes this a generator, so it raises at the first next() like NVDEC

    settings = Settings(face_detector="blazeface", decoder="pyav")
    detector = create_detector(settings)
    path = videos["one_face"]
    info = probe(path, max_side=settings.max_video_side, max_duration_s=settings.max_duration_s)
    tracks, read = find_tracks(path, info, detector, settings, 12, StageClock())
    fallback, fallback_read = find_tracks(path, info, detector, settings, 12, StageClock(), refusing)
    assert fallback_read == read and [t.boxes.tolist() for t in fallback] == [t.boxes.tolist() for t in tracks]
    specs = crop_specs()
    items = plan_crops(tracks, specs, SamplingOptions(8, 1, 2))
    expected = extract_crops(path, items, specs, max_frames=read)
    for mine, theirs in zip(extract_crops(path, items, specs, max_frames=read, frames=refusing), expected, strict=True):
        assert np.array_equal(mine, theirs)
