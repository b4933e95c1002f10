"""Evidence for reviewers: timelines, thumbnails, PCL-I2G heat maps, the annotated video, progress.

One in-process analysis (real MP4 with two faces, real ONNX sessions: FTCN from the conftest
fixture and a PCL-I2G exported with its patch map) is shared by the tests of this module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from service.config import Settings
from service.pipeline.analyse import AnalysisOptions, analyse_video, analyse_video_with_evidence
from service.pipeline.decode import VideoInfo, iter_frames
from service.pipeline.evidence import THUMBNAIL_SIZE, Evidence, safe_progress
from service.pipeline.heatmap_runner import heatmap_runner
from service.pipeline.heatmaps import HEATMAP_SIZE
from service.pipeline.render import RENDER_MAX_SIDE, score_colour
from service.pipeline.result import VideoResult
from service.pipeline.timeline import frame_rate, item_span, track_timeline
from service.serving import Serving

# real models on CPU, like tests/e2e: two exports and a full-size FTCN clip per track (minutes on a busy machine)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

FPS = 24  # tests/media.py writes 24 fps


@pytest.fixture(scope="module")
def evidence_repository(ftcn_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FTCN (no patch map) and a random-init PCL-I2G exported with ``heatmap=True`` (light backbone)."""
    from export.__main__ import export_model

    folder = tmp_path_factory.mktemp("evidence") / "model_repository"
    shutil.copytree(ftcn_repository, folder)
    export_model(
        "pcl_i2g", folder, random_init=True, seed=3, heatmap=True, model_options={"backbone": "mobilenetv2_100"}
    )
    return folder


@dataclass
class Analysed:
    body: VideoResult
    plain: VideoResult  # the same video through analyse_video, PCL-I2G only
    evidence: Evidence
    calls: list[tuple[str, int, int]]
    ftcn_has_map: bool


@pytest.fixture(scope="module")
def analysed(evidence_repository: Path, videos: dict[str, Path]) -> Analysed:
    async def run() -> Analysed:
        serving = Serving(
            Settings(model_repository=evidence_repository, device="cpu", face_detector="blazeface", detect_every=2)
        )
        await serving.load()
        assert serving.ready, serving.reason
        try:
            options = AnalysisOptions.from_settings(
                serving.settings, ["ftcn", "pcl_i2g"], max_clips_per_track=1, frames_per_track=4
            )
            calls: list[tuple[str, int, int]] = []
            body, evidence = await analyse_video_with_evidence(
                videos["two_faces"], "evidence", options, serving, lambda *call: calls.append(call)
            )
            options.models = ["pcl_i2g"]
            plain = await analyse_video(videos["two_faces"], "plain", options, serving)
            ftcn_has_map = heatmap_runner(serving.models["ftcn"].batcher.engine) is not None
        finally:
            for model in serving.models.values():
                await model.batcher.stop()
        return Analysed(body, plain, evidence, calls, ftcn_has_map)

    return asyncio.run(run())


def test_timeline_covers_every_scored_item_inside_the_video(analysed: Analysed) -> None:
    body = analysed.body
    duration = body.video.duration_s
    assert len(body.faces) == 2
    for face in body.faces:
        timeline = face.timeline
        assert timeline == sorted(timeline, key=lambda e: e.start_s)
        for name, model in face.models.items():
            mine = [e for e in timeline if e.model == name]
            assert len(mine) == model.items
            # the track's model score is the mean of its items' calibrated probabilities
            assert np.mean([e.score for e in mine]) == pytest.approx(model.score, abs=1e-5)
        for entry in timeline:
            assert 0 <= entry.start_s < entry.end_s <= duration
        clips = [e for e in timeline if e.model == "ftcn"]
        assert len(clips) == 1 and clips[0].start_s == face.first_frame / FPS
        assert clips[0].end_s - clips[0].start_s == pytest.approx(32 / FPS, abs=2e-3)
        frames = [e for e in timeline if e.model == "pcl_i2g"]
        assert all(e.end_s - e.start_s == pytest.approx(1 / FPS, abs=2e-3) for e in frames)
        assert frames[-1].end_s == pytest.approx((face.last_frame + 1) / FPS, abs=2e-3)  # its last frame


def test_plain_analysis_scores_the_same_items(analysed: Analysed) -> None:
    """analyse_video (no evidence crops) gives PCL-I2G the same items and probabilities."""
    plain, body = analysed.plain, analysed.body
    assert [f.timeline for f in plain.faces] == [[e for e in f.timeline if e.model == "pcl_i2g"] for f in body.faces]
    assert [f.models["pcl_i2g"] for f in plain.faces] == [f.models["pcl_i2g"] for f in body.faces]
    assert all(face.thumbnail_jpeg is None for face in plain.faces + body.faces)


def test_timeline_helpers() -> None:
    info = VideoInfo(width=64, height=64, fps=25.0, frames=50, duration_s=2.0, rotation=0, codec="h264")
    assert item_span(np.array([0, 1, 2, 1]), 25.0, 2.0) == (0.0, 0.12)  # mirror padding: min..max
    assert item_span(np.array([49]), 25.0, 1.99) == (1.96, 1.99)  # clamped to the duration
    assert frame_rate(info) == 25.0
    assert frame_rate(VideoInfo(64, 64, 0.0, 50, 2.0, 0, "h264")) == 25.0
    assert frame_rate(VideoInfo(64, 64, 0.0, 0, 0.0, 0, "h264")) is None
    many = [np.array([i]) for i in range(50)]
    timeline = track_timeline({"m": (many, [0.5] * 50)}, info, cap=10)
    assert len(timeline) == 10 and timeline[0].start_s == 0.0 and timeline[-1].end_s == 2.0
    assert len(track_timeline({"m": (many[:3], [0.5] * 3)}, info, cap=10)) == 3
    assert track_timeline({"m": (many, [0.5] * 50)}, VideoInfo(64, 64, 0.0, 0, 0.0, 0, "h264")) == []


def test_thumbnails_are_faces_as_jpeg(analysed: Analysed) -> None:
    thumbnails = analysed.evidence.thumbnails
    assert sorted(thumbnails) == [f.track_id for f in analysed.body.faces]
    for data in thumbnails.values():
        assert data[:2] == b"\xff\xd8"  # JPEG
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3)
        assert image.std() > 20  # a face, not an empty crop
    faces = [dataclasses.replace(face) for face in analysed.body.faces]
    analysed.evidence.inline(faces)
    assert all(face.thumbnail_jpeg and face.heatmap_png for face in faces)


def test_heat_map_png_where_the_engine_gives_one(analysed: Analysed) -> None:
    heatmaps = analysed.evidence.heatmaps
    assert sorted(heatmaps) == [f.track_id for f in analysed.body.faces]
    for data in heatmaps.values():
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (HEATMAP_SIZE, HEATMAP_SIZE, 3)
    assert not analysed.ftcn_has_map  # FTCN's engine has no patch map output


def test_render_annotated_draws_every_analysed_frame(
    analysed: Analysed, videos: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "annotated.mp4"
    written = analysed.evidence.render_annotated(videos["two_faces"], out)
    frames_analyzed = analysed.body.video.frames_analyzed
    assert written == frames_analyzed == 39  # detection every 2nd frame: the last one analysed is 38
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        rendered = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(rendered) == frames_analyzed
    originals = {f.index: f.rgb for f in iter_frames(videos["two_faces"], max_frames=frames_analyzed)}
    assert rendered[0].shape == originals[0].shape and max(rendered[0].shape) <= RENDER_MAX_SIDE
    scores = analysed.evidence.track_scores
    for track in analysed.evidence.tracks:
        colour = np.array(score_colour(scores[track.track_id]), np.float64)
        for index in (track.first_frame + 1, (track.first_frame + track.last_frame) // 2):  # odd: interpolated
            x1, y1, x2, y2 = (int(round(v)) for v in track.boxes[index - track.first_frame])
            edge = np.concatenate([rendered[index][y1, x1 + 4 : x2 - 4], rendered[index][y1 + 4 : y2 - 4, x1]])
            source = np.concatenate([originals[index][y1, x1 + 4 : x2 - 4], originals[index][y1 + 4 : y2 - 4, x1]])
            drawn = np.abs(edge - colour).mean()
            before = np.abs(source - colour).mean()
            assert drawn < 45 < before, (track.track_id, index, drawn, before)


def test_progress_reports_every_stage_as_it_grows(analysed: Analysed, videos: dict[str, Path], tmp_path: Path) -> None:
    analysis = [call for call in analysed.calls if call[0] != "render"]  # other tests may have rendered already
    before = len(analysed.calls)
    analysed.evidence.render_annotated(videos["two_faces"], tmp_path / "again.mp4")
    calls = analysis + analysed.calls[before:]
    stages = list(dict.fromkeys(stage for stage, _, _ in calls))
    assert stages == ["decode", "crops", "inference", "render"]
    items = sum(model.items for face in analysed.body.faces for model in face.models.values())
    for stage in stages:
        done = [d for s, d, _ in calls if s == stage]
        totals = [t for s, _, t in calls if s == stage]
        assert done == sorted(done) and len(done) >= 2, (stage, done)
        assert totals == sorted(totals, reverse=True) and done[-1] == totals[-1], (stage, totals)
    assert [t for s, _, t in calls if s == "decode"][0] == 40  # planned: the container's 40 frames
    assert [d for s, d, _ in calls if s == "decode"][-1] == analysed.body.video.frames_analyzed
    assert [d for s, d, _ in calls if s == "inference"][-1] == items
    assert [d for s, d, _ in calls if s == "render"][-1] == analysed.body.video.frames_analyzed


def test_a_failing_progress_callback_is_ignored_after_the_first_failure() -> None:
    seen: list[tuple[str, int, int]] = []

    def broken(stage: str, done: int, total: int) -> None:
        seen.append((stage, done, total))
        raise RuntimeError("caller bug")

    report = safe_progress(broken)
    report("decode", 1, 2)
    report("decode", 2, 2)
    assert seen == [("decode", 1, 2)]
    safe_progress(None)("decode", 1, 1)  # no callback: nothing to call
