"""The detection pass keeps the planes around each face (``service.pipeline.kept_faces``) and the crop
pass converts them instead of decoding again: the crops must be bit for bit the second decode's,
on real H.264 with the bundle's five crop rules, whatever part of the frames was kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import get_spec
from service.config import Settings
from service.pipeline.crops import CropItem, SamplingOptions, extract_crops, plan_crops
from service.pipeline.decode import DecodeGuard, RequestCancelled, VideoInfo, iter_frames, probe
from service.pipeline.face_tracks import StageClock, find_tracks
from service.pipeline.faces import create_detector
from service.pipeline.kept_faces import KeptFaces
from service.pipeline.tracks import Track

SPECS = {name: get_spec(name) for name in ("ftcn", "pcl_i2g", "dcl", "lib", "advgame")}
FRAMES = 48


def tracked(path: Path, kept: KeptFaces | None) -> tuple[VideoInfo, list[Track], int]:
    settings = Settings(face_detector="blazeface", decoder="pyav")
    info = probe(path, max_side=settings.max_video_side, max_duration_s=settings.max_duration_s)
    tracks, read = find_tracks(path, info, create_detector(settings), settings, FRAMES, StageClock(), kept=kept)
    return info, tracks, read


def planned(tracks: list[Track]) -> list[CropItem]:
    return plan_crops(tracks, SPECS, SamplingOptions(clip_stride=8, max_clips_per_track=4, frames_per_track=6))


def crops_and_decoded(path: Path, items: list[CropItem], read: int, kept: KeptFaces | None) -> tuple[list, int]:
    """The crops, and how many frames the crop pass decoded again."""
    guard = DecodeGuard(max_side=8192, max_pixels=10**12)
    crops = extract_crops(path, items, SPECS, max_frames=read, threads=1, guard=guard, kept=kept)
    return crops, guard.frames


@pytest.fixture(params=["two_faces", "wild_fake_Obama"])
def face_video(request: pytest.FixtureRequest, videos: dict[str, Path], shared_data: Path) -> Path:
    """Two small synthetic heads side by side (one rectangle bounds both), and a real close-up face whose square
    reaches the frame's edges."""
    return videos[request.param] if request.param in videos else shared_data / "videos" / f"{request.param}.mp4"


def test_crops_from_the_kept_faces_are_the_second_decodes_crops(face_video: Path) -> None:
    kept = KeptFaces(budget_bytes=1 << 30)
    _, tracks, read = tracked(face_video, kept)
    assert tracks and len(kept.frames) >= read - 2 and kept.evicted == 0
    items = planned(tracks)
    expected, decoded_twice = crops_and_decoded(face_video, items, read, None)
    crops, decoded_again = crops_and_decoded(face_video, items, read, kept)
    assert decoded_twice > 0 and decoded_again < decoded_twice / 4  # nearly every frame came from the kept planes
    assert len(crops) == len(items)
    for mine, theirs in zip(crops, expected, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_a_spent_budget_keeps_the_newest_frames_and_decodes_only_up_to_the_last_missing_one(
    videos: dict[str, Path],
) -> None:
    path = videos["two_faces"]
    everything = KeptFaces(budget_bytes=1 << 30)
    _, tracks, read = tracked(path, everything)
    budget = everything.nbytes // 3
    kept = KeptFaces(budget_bytes=budget)
    assert [t.boxes.tolist() for t in tracked(path, kept)[1]] == [t.boxes.tolist() for t in tracks]
    assert 0 < kept.nbytes <= budget and kept.evicted > 0
    first_kept = kept.frames[0]
    assert kept.frames == everything.frames[everything.frames.index(first_kept) :]  # the oldest went first

    items = planned(tracks)
    expected, _ = crops_and_decoded(path, items, read, None)
    crops, decoded_again = crops_and_decoded(path, items, read, kept)
    used = {int(i) for item in items for i in item.frame_indices}
    missing = [i for i in used if i < first_kept]
    assert missing and decoded_again == max(missing) + 1  # the second decode stops after the last frame it needs
    for mine, theirs in zip(crops, expected, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_frames_whose_kept_planes_miss_the_face_are_decoded_again(videos: dict[str, Path]) -> None:
    """A face outside what was kept (here: squares kept around a box far from it) reads a second decode."""
    path = videos["one_face"]
    _, tracks, read = tracked(path, None)
    kept = KeptFaces(budget_bytes=1 << 30)
    for frame in iter_frames(path, max_frames=read, max_side=640, planes=True):
        kept.keep(frame, [np.array([0, 0, 8, 8], np.float32)])  # a corner, not the face
    assert len(kept.frames) == read
    items = planned(tracks)
    expected, decoded_twice = crops_and_decoded(path, items, read, None)
    crops, decoded_again = crops_and_decoded(path, items, read, kept)
    assert decoded_again == decoded_twice
    for mine, theirs in zip(crops, expected, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_a_cancelled_request_stops_the_crop_pass_on_kept_frames(videos: dict[str, Path]) -> None:
    path = videos["one_face"]
    kept = KeptFaces(budget_bytes=1 << 30)
    _, tracks, read = tracked(path, kept)
    guard = DecodeGuard(max_side=8192, max_pixels=10**12)
    guard.cancel()
    with pytest.raises(RequestCancelled):
        extract_crops(path, planned(tracks), SPECS, max_frames=read, threads=1, guard=guard, kept=kept)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_served_logits_are_the_same_with_the_faces_kept(
    tmp_path: Path, videos: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """DFS_KEEP_FACES_MB through the whole analysis (a real ONNX session of a random-init DCL): the
    crop pass takes its frames from the kept planes, and the logits are the ones two decodes give."""
    import asyncio
    import logging

    from export.__main__ import export_model
    from service.pipeline.analyse import AnalysisOptions, video_logits
    from service.serving import Serving

    repository = tmp_path / "model_repository"
    export_model("dcl", repository, random_init=True, seed=3, model_options={"backbone": "mobilenetv2_100"})

    async def logits(keep_mb: int) -> np.ndarray:
        settings = Settings(model_repository=repository, device="cpu", face_detector="blazeface", keep_faces_mb=keep_mb)
        serving = Serving(settings)
        await serving.load()
        assert serving.ready, serving.reason
        try:
            options = AnalysisOptions.from_settings(settings, ["dcl"], frames_per_track=6)
            return (await video_logits(videos["one_face"], f"keep{keep_mb}", options, serving)).logits["dcl"]
        finally:
            for model in serving.models.values():
                await model.batcher.stop()

    with caplog.at_level(logging.DEBUG, logger="service.pipeline.crops"):
        kept = asyncio.run(logits(64))
    said = [r.getMessage() for r in caplog.records if "cropped from the detection pass" in r.getMessage()]
    assert said and not said[0].split(": ")[1].startswith("0 frames"), said
    twice = asyncio.run(logits(0))
    assert len(kept) == 6
    np.testing.assert_array_equal(kept, twice)
