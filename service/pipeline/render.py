"""The annotated video: the analysed frames again, each face track's box drawn in its score's colour.

Like the FTCN reference's demo output, so a reviewer sees which face the numbers belong to and
where it was followed. Boxes are the tracker's per-frame boxes (interpolated between detections
when detection ran every k frames), so every frame of a track has its box. The video is H.264
(libx264, yuv420p) through PyAV, scaled to at most :data:`RENDER_MAX_SIDE` on its longer side with
even dimensions (what yuv420p needs), and holds exactly the frames the analysis decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from service.pipeline.decode import DecodeGuard, iter_frames
from service.pipeline.tracks import Track

RENDER_MAX_SIDE = 1280
_UNSCORED = (160, 160, 160)  # a track no model scored (too short for every model asked)


def score_colour(score: float | None) -> tuple[int, int, int]:
    """RGB from green (0, real) through yellow to red (1, fake); grey when there is no score."""
    if score is None:
        return _UNSCORED
    s = min(max(float(score), 0.0), 1.0)
    return int(round(255 * min(1.0, 2 * s))), int(round(255 * min(1.0, 2 * (1 - s)))), 0


def _draw_track(rgb: np.ndarray, box: np.ndarray, label: str, colour: tuple[int, int, int]) -> None:
    height, width = rgb.shape[:2]
    thickness = max(2, round(max(height, width) / 400))
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    cv2.rectangle(rgb, (x1, y1), (x2, y2), colour, thickness)
    font_scale = max(0.4, max(height, width) / 1600)
    (text_w, text_h), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
    above = y1 - thickness - baseline
    y = above if above - text_h >= 0 else min(height - baseline, y2 + thickness + text_h)
    x = min(max(0, x1), max(0, width - text_w))
    cv2.putText(rgb, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, colour, max(1, thickness // 2), cv2.LINE_AA)


def annotate(
    rgb: np.ndarray, index: int, tracks: Iterable[Track], scores: dict[int, float | None], zoom: float
) -> None:
    """Draw, in place, every track present on frame ``index`` (boxes are in original pixels; ``zoom``
    maps them to this frame's size)."""
    for track in tracks:
        position = index - track.first_frame
        if 0 <= position < len(track.frame_indices):
            score = scores.get(track.track_id)
            label = f"#{track.track_id} {'-' if score is None else f'{score:.2f}'}"
            _draw_track(rgb, track.boxes[position] * zoom, label, score_colour(score))


def output_rate(fps: float) -> Fraction:
    """The stream's frame rate as a rational (29.97 -> 30000/1001); 25 when the source did not say."""
    return Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)


def render_annotated(
    video_path: Path,
    out_path: Path,
    *,
    tracks: list[Track],
    scores: dict[int, float | None],
    frames: int,
    source_width: int,
    fps: float,
    guard: DecodeGuard,
    threads: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Decode frames ``0..frames-1`` again, draw the tracks, write H.264 to ``out_path``; returns frames written.

    ``source_width`` is the upright width the boxes are measured in (``VideoInfo.width``); ``guard``
    bounds this decode as the analysis's did. ``progress(done, total)`` is told every frame written.
    """
    written = 0
    zoom = 1.0
    with av.open(str(out_path), mode="w") as container:
        stream: av.VideoStream | None = None
        for frame in iter_frames(video_path, max_frames=frames, max_side=RENDER_MAX_SIDE, threads=threads, guard=guard):
            rgb = frame.rgb
            if stream is None:  # boxes are in the first frame's upright pixels (as the tracker saw them)
                zoom = rgb.shape[1] / source_width
            rgb = np.ascontiguousarray(rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2])  # yuv420p: even sides
            if stream is None:
                stream = container.add_stream("libx264", rate=output_rate(fps))
                stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
                stream.options = {"crf": "23", "preset": "veryfast"}
            elif (rgb.shape[1], rgb.shape[0]) != (stream.width, stream.height):  # the source changed size mid-way
                rgb = cv2.resize(rgb, (stream.width, stream.height), interpolation=cv2.INTER_AREA)
            annotate(rgb, frame.index, tracks, scores, zoom)
            video_frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            video_frame.pts = written
            for packet in stream.encode(video_frame):
                container.mux(packet)
            written += 1
            if progress is not None:
                progress(written, frames)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return written
