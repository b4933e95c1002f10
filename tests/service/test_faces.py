"""Both face detectors through the service's detector interface, on frames of a real MP4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.pipeline.decode import iter_frames, probe
from service.pipeline.face_tracks import StageClock, find_tracks
from service.pipeline.faces import create_detector


@pytest.fixture(params=["blazeface", "retinaface"])
def settings(request: pytest.FixtureRequest, shared_data: Path) -> Settings:
    if request.param == "retinaface":
        return Settings(
            face_detector="retinaface",
            device="cpu",
            retinaface_weights=shared_data / "weights" / "retinaface_mobilenet0.25_Final.pth",
        )
    return Settings(face_detector="blazeface")


def test_detector_finds_the_face_with_ordered_landmarks(settings: Settings, videos: dict[str, Path]) -> None:
    detector = create_detector(settings)
    assert detector.name == settings.face_detector
    frames = [f.rgb for f in iter_frames(videos["two_faces"], max_frames=4)]
    for faces in detector.detect(frames):
        assert len(faces) == 2
        for face in faces:
            left_eye, right_eye, nose, left_mouth, right_mouth = face.landmarks
            assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
            assert left_eye[1] < nose[1] < left_mouth[1]
            assert face.box[0] <= nose[0] <= face.box[2] and face.box[1] <= nose[1] <= face.box[3]
    assert detector.detect([]) == []


def test_tracks_on_downscaled_detection_map_back_to_full_resolution(
    settings: Settings, videos: dict[str, Path]
) -> None:
    small = settings.model_copy(update={"detection_max_side": 128, "detect_every": 3})
    detector = create_detector(small)
    path = videos["one_face"]
    info = probe(path, max_side=small.max_video_side, max_duration_s=small.max_duration_s)
    tracks, frames_read = find_tracks(path, info, detector, small, 40, StageClock())
    assert frames_read == 40 and len(tracks) == 1
    track = tracks[0]
    # detections every 3rd frame, interpolated in between: the track covers frames 0..39 or 0..39-2
    assert track.first_frame == 0 and track.last_frame >= 37 and track.detected.sum() <= 14
    # the head is pasted at x 24+t/2 .. 184+t/2 in the 272 px wide frame (tests/media.py)
    centre_x = (track.boxes[:, 0] + track.boxes[:, 2]) / 2
    assert np.all((centre_x > 60) & (centre_x < 230))
