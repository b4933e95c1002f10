"""Faces kept from the detection pass, so the crop pass need not decode the video a second time.

The crop pass decodes every frame it needs again at full size (0.3-0.5 s of a 10 s 720p video on
the two-core development CPU, ~1 s at 1080p) only to read the pixels around each face. The
detection pass has those frames in hand: with ``DFS_KEEP_FACES_MB`` it keeps the 4:2:0 planes of
the rectangle around the faces it found (:data:`KEEP_SCALE` x each box's longer side, wider than
any model's crop of that face; the whole frame for a close-up), up to that byte budget per request
(planes are half the bytes of RGB). The crop pass converts the kept planes where they hold every
pixel a frame's crops read, and decodes again only the frames where they do not (the face was not
detected there, it moved out of the rectangle within a clip's one transform, the budget ran out,
a pixel format whose region conversion is not exact). The crops are bit for bit the ones a second
decode gives: the planes are a cut of the frame's own, converted as
:func:`~service.pipeline.decode.region_rgb` converts them.

When the budget runs out the oldest frames make room for the newest: a second decode must run from
the first frame to the last one it needs, so what it can skip is the end of the video, never the
middle. It is off by default because it pays only when a request's whole video fits (copying the
planes costs the detection pass ~0.1-0.2 s): measurements in README's settings table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from service.pipeline.decode import DecodedFrame, PlaneRegion, Region, even_bounds

#: Side of a kept square over the face box's longer side. A box crop reads up to 1.7 x the side
#: (PCL-I2G); FTCN's aligned crop of a close-up face reads ~2.1 x, more where the face moves within
#: the clip its one transform is fitted on (measured on wild_fake_Obama: 2.2 left 20 of 48 frames uncovered).
KEEP_SCALE = 2.6

#: Past this share of the frame, the whole frame is kept: FTCN's crop of a close-up face that moves
#: within its clip reads most of the frame.
WHOLE_FRAME_SHARE = 0.5


@dataclass
class KeptFaces:
    """Per frame, the planes of the rectangle around the faces found there: the newest ``budget_bytes`` of them.

    One rectangle per frame, bounding every face's square, as the crop pass reads one region per
    frame bounding every crop of it (:func:`~service.pipeline.crops.crop_region`).
    """

    budget_bytes: int
    nbytes: int = 0
    evicted: int = 0  # frames given up (oldest first) to keep newer ones inside the budget
    _planes: dict[int, tuple[float, PlaneRegion]] = field(default_factory=dict)  # in frame order

    def keep(self, frame: DecodedFrame, boxes: Iterable[np.ndarray]) -> None:
        """Keep the planes around the boxes (x0, y0, x1, y1 in frame pixels) from ``frame``'s copied planes."""
        squares = [_square_around(box) for box in boxes]
        if frame.planes is None or not squares:
            return
        bounds = (
            min(s[0] for s in squares),
            min(s[1] for s in squares),
            max(s[2] for s in squares),
            max(s[3] for s in squares),
        )
        height, width = frame.planes.whole
        inside = even_bounds(bounds, width, height)  # what a cut of ``bounds`` holds
        if inside is None:
            return
        # a close-up: the rest of the frame costs little, and FTCN's crop of a moving face needs it
        whole = (inside[2] - inside[0]) * (inside[3] - inside[1]) > WHOLE_FRAME_SHARE * width * height
        planes = frame.planes if whole else frame.planes.cut(bounds)
        if planes is None or planes.nbytes > self.budget_bytes:
            return
        while self.nbytes + planes.nbytes > self.budget_bytes:
            _, dropped = self._planes.pop(next(iter(self._planes)))
            self.nbytes -= dropped.nbytes
            self.evicted += 1
        self._planes[frame.index] = (frame.time_s, planes)
        self.nbytes += planes.nbytes

    @property
    def frames(self) -> list[int]:
        """Indices of the frames with kept planes, in order."""
        return list(self._planes)

    def covers(self, index: int, region: Region) -> bool:
        """Whether the planes kept of frame ``index`` hold every pixel of ``region``."""
        kept = self._planes.get(index)
        return kept is not None and kept[1].contains(region)

    def frames_for(self, regions: dict[int, Region], check: Callable[[], None] | None = None) -> Iterator[DecodedFrame]:
        """Each frame of ``regions`` (index -> the part its crops read), in index order, as the crop
        pass's decode would give it: the region's RGB at its corner. Every frame must be covered
        (:meth:`covers`). ``check`` runs before each one (a cancelled request stops here too)."""
        for index in sorted(regions):
            if check is not None:
                check()
            time_s, planes = self._planes[index]
            part = planes.cut(regions[index])
            if part is None:
                raise KeyError(f"frame {index}: the kept planes do not cover {regions[index]}")
            yield DecodedFrame(index, time_s, part.rgb(), part.origin, part.whole)


def _square_around(box: np.ndarray) -> Region:
    """The :data:`KEEP_SCALE` square around ``box``'s centre, in whole pixels (clipped later)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    half = KEEP_SCALE * max(x1 - x0, y1 - y0, 1.0) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return math.floor(cx - half), math.floor(cy - half), math.ceil(cx + half), math.ceil(cy + half)


__all__ = ["KEEP_SCALE", "WHOLE_FRAME_SHARE", "KeptFaces"]
