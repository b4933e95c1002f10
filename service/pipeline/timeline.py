"""Per-track timelines: when in the video each scored clip or frame lies, and what it scored.

A track's score is a mean over its items (``service/pipeline/scores.py``); a reviewer who wants to
see *where* a face looked forged needs the items themselves. Each entry is one item: a clip
model's clip spans its frames, a frame model's frame spans that one frame's duration. Times are
frame indices over the frame rate (indices are decode order from the first frame, as everywhere in
the pipeline), clamped to ``[0, duration_s]``.

Bounded: items per model per track are already capped by the sampling limits
(``DFS_MAX_CLIPS_PER_TRACK_LIMIT``, ``DFS_FRAMES_PER_TRACK_LIMIT``), and a costlier server default
is cut to :data:`TIMELINE_MAX_PER_MODEL` entries per model per track (spread evenly), so a body
holds at most that x models x ``DFS_MAX_TRACKS`` entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.pipeline.crops import frame_positions
from service.pipeline.decode import VideoInfo
from service.pipeline.result import TimelineEntry

#: entries per model per track at most; the sampling limits' defaults (16 clips, 32 frames) fit
TIMELINE_MAX_PER_MODEL = 32


def frame_rate(info: VideoInfo) -> float | None:
    """The stream's frames per second: its declared rate, else frames over duration, else unknown."""
    if info.fps > 0:
        return info.fps
    if info.frames > 0 and info.duration_s > 0:
        return info.frames / info.duration_s
    return None


def item_span(frame_indices: np.ndarray, fps: float, duration_s: float) -> tuple[float, float]:
    """Seconds from the first frame's start to the last frame's end (mirror padding repeats indices,
    so the span is min..max), inside ``[0, duration_s]`` when the duration is known."""
    start = float(np.min(frame_indices)) / fps
    end = (float(np.max(frame_indices)) + 1.0) / fps
    if duration_s > 0:
        start, end = min(start, duration_s), min(end, duration_s)
    return round(start, 3), round(end, 3)


def track_timeline(
    per_model: dict[str, tuple[Sequence[np.ndarray], Sequence[float]]],
    info: VideoInfo,
    cap: int = TIMELINE_MAX_PER_MODEL,
) -> list[TimelineEntry]:
    """The entries of one track, sorted by start.

    ``per_model`` maps a model to its items' frame indices and calibrated probabilities, in item
    order (what :func:`service.pipeline.scores.track_model_score` returns as ``item_scores``). Empty
    when the container gives neither a frame rate nor a duration: there is no time to place them at.
    """
    fps = frame_rate(info)
    if fps is None:
        return []
    entries = []
    for model, (indices, probabilities) in per_model.items():
        for position in frame_positions(len(indices), cap):  # all of them, or ``cap`` spread evenly
            start, end = item_span(indices[position], fps, info.duration_s)
            score = round(float(probabilities[position]), 6)
            entries.append(TimelineEntry(model=model, start_s=start, end_s=end, score=score))
    entries.sort(key=lambda e: (e.start_s, e.end_s, e.model))
    return entries
