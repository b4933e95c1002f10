"""The crop pass converts only the faces to RGB (``regions`` in ``iter_frames``): the crops must be
exactly the ones a whole-frame conversion gives, on real H.264, for any region, colour matrix and
range, and wherever a region cannot promise that the whole frame is converted instead."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from models.spec import ModelSpec
from service.pipeline.crops import CropItem, box_matrix, extract_crops
from service.pipeline.decode import region_rgb
from tests import media


def textured_video(path: Path, width: int = 640, height: int = 360, frames: int = 12, pix_fmt: str = "yuv420p") -> Path:
    """Noise over a gradient (every pixel and chroma sample differs), encoded at ``pix_fmt``."""
    rng = np.random.default_rng(7)
    ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {"crf": "12", "preset": "ultrafast"}
        images = [np.clip(ramp + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8) for _ in range(frames)]
        media.mux_frames(container, stream, images)
    return path


@pytest.mark.parametrize("matrix_and_range", [None, (1, 2), (5, 1)], ids=["as-coded", "bt709-full", "bt601-limited"])
def test_a_region_converts_to_exactly_the_whole_frames_pixels(tmp_path: Path, matrix_and_range) -> None:  # noqa: ANN001
    video = textured_video(tmp_path / "texture.mp4")
    rng = np.random.default_rng(0)
    checked = 0
    with av.open(str(video)) as container:
        for number, frame in enumerate(container.decode(video=0)):
            if number == 4:
                break
            if matrix_and_range is not None:
                frame.colorspace, frame.color_range = matrix_and_range
            whole = frame.to_ndarray(format="rgb24")
            for _ in range(25):  # odd and even corners and sizes, some overhanging the frame
                x0, y0 = int(rng.integers(-20, 600)), int(rng.integers(-20, 330))
                region = (x0, y0, x0 + int(rng.integers(3, 300)), y0 + int(rng.integers(3, 170)))
                part = region_rgb(frame, region)
                if part is None:  # more than half the frame: converted whole by the caller
                    continue
                rgb, (ox, oy) = part
                assert ox % 2 == 0 and oy % 2 == 0 and ox <= max(region[0], 0) and oy <= max(region[1], 0)
                assert ox + rgb.shape[1] >= min(region[2], 640) and oy + rgb.shape[0] >= min(region[3], 360)
                np.testing.assert_array_equal(rgb, whole[oy : oy + rgb.shape[0], ox : ox + rgb.shape[1]])
                checked += 1
    assert checked > 60


def test_regions_are_refused_where_they_cannot_be_exact_or_would_not_pay(tmp_path: Path) -> None:
    video_444 = textured_video(tmp_path / "yuv444.mp4", pix_fmt="yuv444p")
    video_420 = textured_video(tmp_path / "yuv420.mp4")
    with av.open(str(video_444)) as container:
        frame = next(container.decode(video=0))
        assert frame.format.name == "yuv444p"
        assert region_rgb(frame, (10, 10, 100, 100)) is None, "4:4:4 is converted whole"
    with av.open(str(video_420)) as container:
        frame = next(container.decode(video=0))
        assert region_rgb(frame, (0, 0, 600, 340)) is None, "most of the frame: converted whole"
        assert region_rgb(frame, (700, 10, 800, 100)) is None, "outside the frame: nothing to convert"
        assert region_rgb(frame, (10, 10, 100, 100)) is not None


def random_items(rng: np.random.Generator, specs: dict[str, ModelSpec], frames: int, width: int, height: int):
    """Box crops and rotated similarity crops at random places, some overhanging the frame edges."""
    items = []
    for track in range(3):
        for name, spec in specs.items():
            indices = np.sort(rng.choice(frames, size=spec.num_frames, replace=spec.num_frames > frames))
            cx, cy, side = rng.uniform(-30, width + 30), rng.uniform(-30, height + 30), rng.uniform(40, 260)
            box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
            matrix = box_matrix(box, spec.crop.scale, spec.input_size)
            if track == 2:  # a roll, as an aligned crop has
                turn = cv2.getRotationMatrix2D((spec.input_size / 2, spec.input_size / 2), rng.uniform(-40, 40), 1.0)
                matrix = turn @ np.vstack([matrix, [0, 0, 1]])
            items.append(CropItem(name, track, indices, np.repeat(matrix[None], len(indices), axis=0)))
    return items


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv444p"])
def test_crops_cut_from_regions_equal_crops_cut_from_whole_frames(tmp_path: Path, pix_fmt: str) -> None:
    from models import get_spec

    video = textured_video(tmp_path / f"{pix_fmt}.mp4", frames=40, pix_fmt=pix_fmt)
    specs = {"dcl": get_spec("dcl"), "ftcn": get_spec("ftcn")}
    items = random_items(np.random.default_rng(1), specs, 40, 640, 360)
    crops = extract_crops(video, items, specs, max_frames=40)
    # the reference: every frame converted whole, each crop warped by its own matrix
    from service.pipeline.decode import iter_frames

    whole = {f.index: f.rgb for f in iter_frames(video, max_frames=40)}
    for item, got in zip(items, crops, strict=True):
        size = specs[item.model].input_size
        for position, (index, matrix) in enumerate(zip(item.frame_indices, item.matrices, strict=True)):
            expected = cv2.warpAffine(
                whole[int(index)], matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
            )
            np.testing.assert_array_equal(got[position], expected, err_msg=f"{item.model} track {item.track_id}")


def test_crops_across_a_mid_stream_size_change_equal_whole_frame_crops(tmp_path: Path) -> None:
    """The canvas is remade when the frame size changes, and each size's crops stay exact."""
    from models import get_spec
    from service.pipeline.decode import iter_frames

    video = media.resolution_switch(tmp_path / "switch.mp4", (320, 240, 12), (640, 360, 12))
    specs = {"dcl": get_spec("dcl")}
    matrix = box_matrix(np.array([100.0, 60.0, 180.0, 150.0]), specs["dcl"].crop.scale, specs["dcl"].input_size)
    items = [CropItem("dcl", 0, np.arange(24), np.repeat(matrix[None], 24, axis=0))]
    crops = extract_crops(video, items, specs, max_frames=24)
    whole = [f.rgb for f in iter_frames(video, max_frames=24)]
    assert {w.shape[:2] for w in whole} == {(240, 320), (360, 640)}
    size = specs["dcl"].input_size
    for position, frame in enumerate(whole):
        expected = cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        np.testing.assert_array_equal(crops[0][position], expected)
