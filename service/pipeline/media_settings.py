"""The media layer's own settings: decoding and face finding, read from ``DFS_*`` variables.

The web app's :class:`service.config.Settings` extends this class, so every name stays one
``DFS_*`` variable for the service; training's face cache (``training.preprocess``) reads the same
class without importing the app, which is how its crops follow the very rules the service uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MediaSettings(BaseSettings):
    """Which device, how much to decode, which faces and tracks a video yields."""

    model_config = SettingsConfigDict(env_prefix="DFS_", env_file=None, extra="ignore")

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where engines and the face detector run.")

    # --- decode -----------------------------------------------------------------------------
    max_frames: int = Field(
        256, gt=0, description="Frames decoded from the start of a video, at most (a request's max_frames too)."
    )
    max_video_side: int = Field(
        8192, gt=0, description="Refuse videos wider or taller than this (header check, then every decoded frame)."
    )
    max_duration_s: float = Field(4 * 3600.0, gt=0, description="Refuse videos longer than this (header check).")
    decode_threads: int = Field(2, ge=0, description="FFmpeg decoder threads per request (0 = auto).")
    # Decode cost follows pixels, not bytes: a 405 KB 8192x8192 black video cost 21 s of both cores,
    # and a 752 KB file switched mid-way from 64x64 to 16000x16000 frames. Every decoded frame is
    # checked against DFS_MAX_VIDEO_SIDE and charged to this budget (service/pipeline/decode.py).
    # The default is 4K UHD (3840x2160) at the default 256 frames in both decode passes (detection,
    # then crops): the README's 1080p x 256 frames uses a quarter of it.
    max_decode_pixels: int = Field(
        3840 * 2160 * 256 * 2,
        gt=0,
        description="Pixels (width x height x frames) one request may decode, both "
        "passes together; a video whose header already exceeds it, or that exceeds it while decoding, is a 413.",
    )
    # A still GIF or a file that breaks after a few frames was scored from the 1-25 frames that decoded.
    # 8 lets any 1-second clip at 8 fps or more pass (every common frame rate), and is twice
    # DFS_MIN_TRACK_FRAMES, so a face seen on every frame still forms a track.
    min_decoded_frames: int = Field(
        8,
        ge=1,
        description="Fewer decoded frames than this (or than a request's max_frames, if lower) is a 415 "
        "too_few_frames; fewer than the container claims is a warning in the response.",
    )
    # The crop pass decodes the video a second time to read the pixels around the faces; the detection
    # pass can keep those pixels instead (service/pipeline/kept_faces.py), at a memory cost, so it is
    # off by default. Measured on the 2-core machine, detection + crops of a 10 s close-up face video
    # (bench/e2e.py's, median of 6 alternated): 720p 2.07 s keeping 86 MB vs 2.23 s; 1080p 2.35 s
    # keeping 193 MB vs 2.83 s, but 2.71 vs 2.72 s within 96 MB (copying the planes costs the detection
    # pass ~0.1-0.2 s; what does not fit is decoded again). Served end to end at 96 MB, 3 alternated
    # rounds: s/video within the machine's noise, server RSS at 4 clients +150-250 MB.
    keep_faces_mb: int = Field(
        0,
        ge=0,
        description="Megabytes per request of the pixels around the faces the detection pass keeps for the crop "
        "pass, which then decodes again only the frames they do not cover (0 = off: decode the video twice). "
        "Pays only when a request's whole video fits: ~0.75 MB a frame of a 720p close-up, ~1.6 MB at 1080p.",
    )
    decoder: Literal["auto", "pyav", "nvdec"] = Field(
        "auto",
        description="auto = NVDEC (PyNvVideoCodec; frames stay on the GPU through detection and crops) when it is "
        "usable and the device is cuda, else PyAV on the CPU; nvdec = require it (start-up fails with the reason "
        "otherwise); files NVDEC cannot decode fall back to PyAV.",
    )

    # --- faces and tracks -------------------------------------------------------------------
    face_detector: Literal["auto", "blazeface", "retinaface"] = Field(
        "auto", description="auto = RetinaFace when its weights file exists, else BlazeFace."
    )
    # mediapipe by default: LiteRT finds the same faces to a fraction of a pixel, but served through it
    # the bundle's val ensemble read 0.864 instead of 0.879 (one video pair of 66, fp32, recalibrated
    # on its crops; held-out 0.667 both), beyond the 0.01 a speed option may move it (README).
    blazeface_runtime: Literal["mediapipe", "litert"] = Field(
        "mediapipe",
        description="What runs BlazeFace: mediapipe = mediapipe's graph (one core); litert = the same model "
        "file on LiteRT (ai-edge-litert) with the graph's steps in service/pipeline/blazeface.py, 3.3 vs 4.4 ms "
        "a 720p frame on one core, faces within 0.5 px of mediapipe's on 90%+ of faces.",
    )
    # One: the detection pass decodes in a read-ahead thread beside the detector (read_ahead.py), so on
    # two cores a second detector thread only contends with it (find_tracks on a 10 s 720p video: 0.60 s
    # on one thread or two, mediapipe's graph 0.64-0.71 s), and at 4 clients every core is busy anyway.
    face_detector_threads: int = Field(
        1, ge=0, description="LiteRT threads of the BlazeFace detector per request (0 = every core)."
    )
    retinaface_weights: Path | None = Field(
        None, description="Pytorch_Retinaface weights (MobileNet-0.25 or ResNet-50)."
    )
    detection_max_side: int = Field(640, ge=64, description="Frames are downscaled to this longer side for detection.")
    detect_every: int = Field(
        1, ge=1, description="Run the face detector every k-th frame; tracks interpolate between."
    )
    min_face_score: float = Field(0.5, ge=0, le=1)
    min_face_size: int = Field(24, ge=1, description="Smallest face side in pixels of the original frame.")
    max_tracks: int = Field(8, ge=1, description="Face tracks analysed per video (largest first).")
    min_track_frames: int = Field(4, ge=1, description="Tracks seen on fewer frames are dropped as noise.")
    track_iou: float = Field(0.3, gt=0, lt=1, description="IoU that links a detection to a track.")
    track_max_gap: int = Field(8, ge=0, description="Frames a track may go undetected before it ends.")
