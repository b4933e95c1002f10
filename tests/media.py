"""Real H.264 MP4s written with PyAV for the tests: moving faces, several faces, no face.

The face is scikit-image's ``astronaut`` (public domain). Each video pans the face over a plain
background so trackers see motion and crops change from frame to frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import av
import cv2
import numpy as np
from skimage import data

# Face region of skimage's astronaut (512x512), widened so the detector sees hair and chin.
_FACE_REGION = (120, 20, 340, 240)  # x1, y1, x2, y2


def astronaut_face(size: int) -> np.ndarray:
    """The astronaut's head and shoulders, RGB uint8, ``size`` x ``size``."""
    x1, y1, x2, y2 = _FACE_REGION
    return cv2.resize(data.astronaut()[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_AREA)


def write_video(path: Path, frames: list[np.ndarray], fps: int = 24, *, faststart: bool = False) -> Path:
    """Encode RGB frames as H.264 (yuv420p) in an MP4 container (``faststart``: index first, so a
    truncated copy still opens and decodes up to where it was cut)."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        mux_frames(container, stream, frames)
    return path


def mux_frames(container: av.container.OutputContainer, stream: av.VideoStream, frames: Iterable[np.ndarray]) -> None:
    """Encode RGB frames into ``stream`` and flush the encoder: what every writer here ends with."""
    for rgb in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def _h264_segment(width: int, height: int, frames: int, container_format: str, fps: int = 24) -> bytes:
    """``frames`` flat grey H.264 frames (built as YUV planes: no RGB conversion at large sizes)."""
    import io

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "35"}
        for t in range(frames):
            frame = av.VideoFrame(width, height, "yuv420p")
            for plane, value in zip(frame.planes, (64 + 4 * (t % 8), 128, 128), strict=True):
                plane.update(bytes([value]) * plane.buffer_size)
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def blank_video(path: Path, width: int, height: int, frames: int) -> Path:
    """A flat H.264 MP4 of any size: tiny on disk, costly to decode at large sizes."""
    path.write_bytes(_h264_segment(width, height, frames, "mp4"))
    return path


def resolution_switch(path: Path, first: tuple[int, int, int], then: tuple[int, int, int]) -> Path:
    """An MPEG-TS stream of ``first`` = (width, height, frames), then ``then``: two H.264 segments back
    to back, so the header says the first size and the decoder meets the second mid-stream."""
    path.write_bytes(_h264_segment(*first, "mpegts") + _h264_segment(*then, "mpegts"))
    return path


def still_gif(path: Path, size: int = 64) -> Path:
    """A one-frame GIF of the astronaut: FFmpeg opens it as a one-frame video."""
    with av.open(str(path), mode="w", format="gif") as container:
        stream = container.add_stream("gif", rate=1)
        stream.width, stream.height, stream.pix_fmt = size, size, "rgb8"
        frame = av.VideoFrame.from_ndarray(astronaut_face(size), format="rgb24").reformat(format="rgb8")
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return path


def cut_after_packets(source: Path, target: Path, packets: int) -> Path:
    """``source`` cut right after its ``packets``-th video packet: a truncated upload whose index
    (``faststart``) still claims every frame, of which about ``packets`` decode."""
    with av.open(str(source)) as container:
        ends = [p.pos + p.size for p in container.demux(video=0) if p.pos is not None and p.size]
    target.write_bytes(source.read_bytes()[: ends[packets - 1]])
    return target


def _canvas(width: int, height: int, t: int) -> np.ndarray:
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = (90 + (t % 7), 110, 130)
    return canvas


def face_video(
    path: Path, *, faces: int = 1, frames: int = 40, face_size: int = 160, fps: int = 24, faststart: bool = False
) -> Path:
    """``faces`` astronaut heads side by side, drifting right and down by a pixel every two frames
    (starting over every 64 frames)."""
    face = astronaut_face(face_size)
    width, height = 64 + faces * (face_size + 48), face_size + 80
    width += width % 2
    out = []
    for t in range(frames):
        canvas = _canvas(width, height, t)
        drift = t % 64  # long videos start over rather than leave the canvas
        for k in range(faces):
            x, y = 24 + k * (face_size + 48) + drift // 2, 24 + drift // 4
            canvas[y : y + face_size, x : x + face_size] = face
        out.append(canvas)
    return write_video(path, out, fps, faststart=faststart)


def no_face_video(path: Path, *, frames: int = 40, fps: int = 24) -> Path:
    """Moving coloured rectangles: plenty of edges, no face."""
    out = []
    for t in range(frames):
        canvas = _canvas(256, 192, t)
        cv2.rectangle(canvas, (20 + t, 30), (90 + t, 120), (200, 40, 40), -1)
        cv2.circle(canvas, (180, 100 - t // 2), 30, (30, 180, 60), -1)
        out.append(canvas)
    return write_video(path, out, fps)


def audio_only_file(path: Path, seconds: float = 0.5) -> Path:
    """An M4A-style MP4 holding only AAC audio (no video stream)."""
    rate = 44100
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        samples = (np.sin(np.linspace(0, 440 * 2 * np.pi * seconds, int(rate * seconds))) * 0.2).astype(np.float32)
        frame_size = 1024
        for start in range(0, len(samples) - frame_size, frame_size):
            frame = av.AudioFrame.from_ndarray(samples[None, start : start + frame_size], format="flt", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
