"""Fuzz the media path (probe -> decode -> face detection) with atheris (libFuzzer) on mutated videos.

    python tests/fuzz/fuzz_media.py -runs=2000                  # bounded, as CI runs it
    python tests/fuzz/fuzz_media.py -max_total_time=3600 CORPUS # longer; CORPUS keeps what it learns
    python tests/fuzz/fuzz_media.py crash-1234abcd              # replay one input

Every input is written to a file and taken through the stages a request takes before cropping,
with the service's own functions (``service/pipeline/decode.py``, ``analyse.py``, ``faces.py``):
``probe`` (header checks and one decoded frame), the pixel budget's plan (``DecodeGuard.check_plan``),
``find_tracks`` (``iter_frames`` at detection size under the request's ``DecodeGuard``, mediapipe
BlazeFace on chunks of frames, the tracker) and ``check_decoded_frames``. A documented refusal
(a :class:`service.errors.ServiceError`: ``NotAVideo``, ``TooLarge``, ...) is a pass, as is a
scored video; any other exception is a crash (libFuzzer saves the input as ``crash-<sha1>`` under
``--artifacts`` and stops), and so is a native crash in FFmpeg or mediapipe, or an input that runs
past ``-timeout`` seconds.

The seed corpus is written here, small, with PyAV: H.264 in MP4, VP8 in WebM, VP9 in WebM, H.264
in Matroska, an MPEG-TS stream that changes resolution mid-way, and 1 s stream copies of two of
``../shared/data/videos/`` when present (real encoders' bitstreams). libFuzzer mutates them
(bit flips, byte runs, splices of two seeds, truncations). atheris instruments the ``service``
package, so inputs that reach new branches there are kept; FFmpeg itself is not instrumented, so
this is mostly a mutation fuzzer for it, bounded by its runs.

A crash found: copy the file into ``tests/fuzz/corpus_regressions/`` (small files only), fix the
stage, and ``tests/fuzz/test_regressions.py`` feeds it through :func:`media_path` from then on.
Options of our own come first (``--artifacts``, ``--seeds``); every ``-flag=value`` and every
positional argument goes to libFuzzer.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe: no INFO line per graph
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_VIDEOS = REPO_ROOT.parent / "shared" / "data" / "videos"
#: Real footage cut into seeds (small: 146x212 and 386x404); missing files are skipped.
SHARED_SEEDS = ("wild_real_Reagan.mp4", "wild_real_Obama.mp4")

#: Limits of the fuzzed path: the service's checks, at sizes that keep one input well under a
#: second (a mutated header may claim any size; the guard's refusal is a documented error).
MAX_FRAMES = 8
MAX_SIDE = 1024
MAX_PIXELS = MAX_SIDE * MAX_SIDE * MAX_FRAMES * 2


# ---- seeds --------------------------------------------------------------------------------------


def _encode(path: Path, frames: list, codec: str, container_format: str, fps: int = 12) -> Path:
    """RGB frames -> ``codec`` in ``container_format`` (yuv420p, fast settings)."""
    import av
    import numpy as np

    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "30"}
        elif codec.startswith("libvpx"):
            stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "40", "b": "200k"}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _face_frames(frames: int = 10, face_size: int = 96) -> list:
    """The astronaut drifting over a plain background (tests/media.py), small enough to fuzz fast."""
    from tests import media

    tmp = Path(tempfile.mkdtemp(prefix="dfs-seed-"))
    clip = media.face_video(tmp / "face.mp4", faces=1, frames=frames, face_size=face_size)
    import av

    with av.open(str(clip)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def cut_seconds(source: Path, target: Path, seconds: float) -> Path:
    """The first ``seconds`` of ``source``'s video stream, packets copied (no re-encoding)."""
    import av

    with av.open(str(source)) as src, av.open(str(target), mode="w", format="mp4") as out:
        stream = src.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is None:  # the demuxer's flush packet
                continue
            if packet.pts is not None and float(packet.pts * stream.time_base) >= seconds:
                break
            packet.stream = copy
            out.mux(packet)
    return target


def write_seeds(folder: Path) -> list[Path]:
    """The seed corpus (see the module docstring); a few KB to a few tens of KB each."""
    from tests import media

    folder.mkdir(parents=True, exist_ok=True)
    frames = _face_frames()
    seeds = [
        _encode(folder / "h264.mp4", frames, "libx264", "mp4"),
        _encode(folder / "vp8.webm", frames, "libvpx", "webm"),
        _encode(folder / "vp9.webm", frames[:6], "libvpx-vp9", "webm"),
        _encode(folder / "h264.mkv", frames[:6], "libx264", "matroska"),
        media.resolution_switch(folder / "switch.ts", (64, 48, 3), (128, 96, 3)),
    ]
    for name in SHARED_SEEDS:
        if (SHARED_VIDEOS / name).is_file():
            seeds.append(cut_seconds(SHARED_VIDEOS / name, folder / f"cut_{name}", 1.0))
    return seeds


# ---- the fuzzed path ------------------------------------------------------------------------------


class MediaPath:
    """The stages a request's video goes through before cropping, with one detector for all inputs."""

    def __init__(self) -> None:
        from service.config import Settings
        from service.pipeline.faces import BlazeFaceDetector

        self.settings = Settings(max_frames=MAX_FRAMES, max_video_side=MAX_SIDE, max_decode_pixels=MAX_PIXELS,
                                 decode_threads=1, detect_every=1)
        self.detector = BlazeFaceDetector(min_score=self.settings.min_face_score)
        self.scratch = Path(tempfile.mkdtemp(prefix="dfs-fuzz-")) / "video"  # no suffix, as staged uploads

    def run(self, data: bytes) -> str:
        """Take ``data`` through the path; returns ``"ok: N tracks"`` or the documented error's code.

        Anything but a :class:`~service.errors.ServiceError` propagates: that is the crash."""
        from service.errors import ServiceError
        from service.pipeline.analyse import StageClock, check_decoded_frames, find_tracks, planned_frames
        from service.pipeline.decode import DecodeGuard, probe

        self.scratch.write_bytes(data)
        settings = self.settings
        guard = DecodeGuard(max_side=settings.max_video_side, max_pixels=settings.max_decode_pixels)
        try:
            info = probe(self.scratch, max_side=settings.max_video_side, max_duration_s=settings.max_duration_s)
            guard.check_plan(info.width, info.height, planned_frames(info, MAX_FRAMES))
            tracks, _ = find_tracks(self.scratch, info, self.detector, settings, MAX_FRAMES, StageClock(), guard=guard)
            check_decoded_frames(info, guard.frames, MAX_FRAMES, settings)
        except ServiceError as exc:
            return f"{exc.status_code} {exc.code}"
        return f"ok: {len(tracks)} tracks"


_PATH: MediaPath | None = None


def media_path(data: bytes) -> str:
    """:meth:`MediaPath.run` on one shared instance (the detector's graph is built once)."""
    global _PATH
    if _PATH is None:
        _PATH = MediaPath()
    return _PATH.run(data)


# ---- the command ----------------------------------------------------------------------------------


def save_crash(data: bytes, folder: Path) -> Path:
    """Keep a crashing input as ``crash-<sha1>``, whatever libFuzzer manages on its way out (it
    writes one only for some exits, and mediapipe's threads can stall the process's end)."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"crash-{hashlib.sha1(data).hexdigest()}"
    target.write_bytes(data)
    print(f"crash input saved to {target}", file=sys.stderr, flush=True)
    return target


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Flags of the form -name=value (e.g. -runs=2000, "
        "-max_total_time=60, -timeout=30) and corpus folders or input files go to libFuzzer.",
        epilog="Crash files land in --artifacts; keep the small ones in tests/fuzz/corpus_regressions/.",
    )
    parser.add_argument("--artifacts", type=Path, default=Path("."), help="folder for crash-/timeout- files (default: .)")
    parser.add_argument("--seeds", type=Path, default=None,
                        help="seed folder to write and fuzz from (default: a fresh temp folder); "
                             "ignored when corpus folders or files are given")
    return parser.parse_known_args(argv)


def libfuzzer_argv(args: argparse.Namespace, rest: list[str]) -> list[str]:
    """argv for libFuzzer: our defaults, the caller's flags, and a seeded corpus unless one is given."""
    args.artifacts.mkdir(parents=True, exist_ok=True)
    flags = [a for a in rest if a.startswith("-")]
    inputs = [a for a in rest if not a.startswith("-")]
    defaults = {"-timeout": "30", "-rss_limit_mb": "4096", "-max_len": str(256 * 1024)}
    flags = [f"{k}={v}" for k, v in defaults.items() if not any(f.startswith(k + "=") for f in flags)] + flags
    if not inputs:
        seeds = args.seeds or Path(tempfile.mkdtemp(prefix="dfs-fuzz-seeds-"))
        write_seeds(seeds)
        inputs = [str(seeds)]
    return [sys.argv[0], f"-artifact_prefix={args.artifacts.resolve()}/", *flags, *inputs]


def main() -> None:
    args, rest = parse_args(sys.argv[1:])
    import atheris

    with atheris.instrument_imports(include=["service"]):
        import service.pipeline.analyse  # noqa: F401 - instrumented for coverage feedback
        import service.pipeline.decode  # noqa: F401

    path = MediaPath()

    def one_input(data: bytes) -> None:
        try:
            path.run(data)
        except BaseException:
            save_crash(data, args.artifacts)
            raise

    atheris.Setup(libfuzzer_argv(args, rest), one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
