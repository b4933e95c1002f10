"""Progress of one analysis, reported from the pipeline's worker threads.

The pipeline calls ``progress(stage, done, total)`` from its worker threads, often (every decoded
frame). Writing each call to the database would cost more than the work it reports, so the callback
only keeps the latest report under a lock; whoever shows it (the job runner's flusher, which writes
to SQLite a few times a second, or the CLI's progress bar) reads the latest snapshot at its own pace.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Progress:
    stage: str
    done: int
    total: int

    def body(self) -> dict[str, Any]:
        """The API's view: ``fraction`` is the share of the current stage done (null when its total
        is not known)."""
        fraction = min(1.0, self.done / self.total) if self.total > 0 else None
        return {
            "stage": self.stage,
            "done": self.done,
            "total": self.total,
            "fraction": None if fraction is None else round(fraction, 4),
        }


class ProgressTracker:
    """A thread-safe ``progress(stage, done, total)`` callback that keeps only the latest report."""

    def __init__(self, stage: str = "queued") -> None:
        self._lock = threading.Lock()
        self._latest = Progress(stage, 0, 0)
        self._version = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            self._latest = Progress(str(stage), int(done), int(total))
            self._version += 1

    def snapshot(self) -> tuple[int, Progress]:
        """``(version, latest)``: the version grows with every report, so a reader can skip repeats."""
        with self._lock:
            return self._version, self._latest
