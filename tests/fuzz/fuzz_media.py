"""Fuzz the media path (probe -> decode -> face detection) with atheris (libFuzzer) on mutated videos.

    python tests/fuzz/fuzz_media.py -runs=2000                  # bounded, as CI runs it
    python tests/fuzz/fuzz_media.py -max_total_time=3600 CORPUS # longer; CORPUS keeps what it learns
    python tests/fuzz/fuzz_media.py crash-1234abcd              # replay one input

Every input is written to a file and taken through the stages a request takes before cropping,
with the service's own functions (``service/pipeline/decode.py``, ``analyse.py``, ``faces.py``):
``probe`` (header checks and one decoded frame), the pixel budget's plan (``DecodeGuard.check_plan``),
``find_tracks`` (``iter_frames`` at detection size under the request's ``DecodeGuard``, mediapipe
BlazeFace on chunks of frames, the tracker), ``check_decoded_frames``, then ``plan_crops`` and
``extract_crops`` (the second decode pass, at full size, warping a clip and a frame model's crops
from every track). Only the engines are left out. A documented refusal
(a :class:`service.pipeline.failures.RequestFailure`: ``NotAVideo``, ``TooLarge``, ...) is a pass, as is a
scored video; any other exception is a crash (libFuzzer saves the input as ``crash-<sha1>`` under
``--artifacts`` and stops), and so is a native crash in FFmpeg or mediapipe, or an input that runs
past ``-timeout`` seconds.

The seed corpus is written here, small, with PyAV: H.264 in MP4, VP8 in WebM, VP9 in WebM, H.264
in Matroska, an MPEG-TS stream that changes resolution mid-way, and 1 s stream copies of two of
``../shared/data/videos/`` when present (real encoders' bitstreams). libFuzzer mutates them (bit
flips, byte runs, crossovers), and :func:`make_mutator` adds truncations, extreme header integers and
splices, restarting from any seed. atheris instruments the ``service`` package, so inputs that reach
new branches there are kept; FFmpeg itself is not instrumented, so for it this is a mutation fuzzer,
bounded by its runs.

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
MAX_LEN = 256 * 1024  # libFuzzer's -max_len default here: every seed fits
#: The detection pass keeps the faces' planes for the crop pass (DFS_KEEP_FACES_MB, off by default): on
#: here so mutated streams go through that path too; half of MAX_FRAMES at MAX_SIDE, so some are decoded again.
KEPT_FACES_BYTES = MAX_SIDE * MAX_SIDE * 3 // 2 * MAX_FRAMES // 2


# ---- seeds --------------------------------------------------------------------------------------


def _encode(path: Path, frames: list, codec: str, container_format: str, fps: int = 12) -> Path:
    """RGB frames -> ``codec`` in ``container_format`` (yuv420p, fast settings)."""
    import av

    from tests import media

    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "30"}
        elif codec.startswith("libvpx"):
            stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "40", "b": "200k"}
        media.mux_frames(container, stream, frames)
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
        _encode(folder / "vp9.webm", frames, "libvpx-vp9", "webm"),
        _encode(folder / "h264.mkv", frames, "libx264", "matroska"),
        media.resolution_switch(folder / "switch.ts", (64, 48, 5), (128, 96, 5)),
    ]
    for name in SHARED_SEEDS:
        if (SHARED_VIDEOS / name).is_file():
            seeds.append(cut_seconds(SHARED_VIDEOS / name, folder / f"cut_{name}", 1.0))
    return seeds


# ---- the fuzzed path ------------------------------------------------------------------------------


class MediaPath:
    """The stages a request's video goes through before cropping, with one detector for all inputs."""

    def __init__(self) -> None:
        from dataclasses import replace

        from models import get_spec
        from service.config import Settings
        from service.pipeline.faces import BlazeFaceDetector

        self.settings = Settings(
            max_frames=MAX_FRAMES,
            max_video_side=MAX_SIDE,
            max_decode_pixels=MAX_PIXELS,
            decode_threads=1,
            detect_every=1,
        )
        self.detector = BlazeFaceDetector(min_score=self.settings.min_face_score)
        # FTCN's aligned clips and DCL's box crops, shrunk to fit MAX_FRAMES and to warp fast
        self.specs = {
            "clip": replace(get_spec("ftcn"), num_frames=4, input_size=32),
            "frame": replace(get_spec("dcl"), input_size=32),
        }
        self.scratch = Path(tempfile.mkdtemp(prefix="dfs-fuzz-")) / "video"  # no suffix, as staged uploads

    def run(self, data: bytes) -> str:
        """Take ``data`` through the path; returns ``"ok: N tracks"`` or the documented error's code.

        Anything but a :class:`~service.pipeline.failures.RequestFailure` propagates: that is the crash."""
        from service.errors import RequestFailure, http_status
        from service.pipeline.analyse import check_decoded_frames, planned_frames
        from service.pipeline.crops import SamplingOptions, extract_crops, plan_crops
        from service.pipeline.decode import DecodeGuard, probe
        from service.pipeline.face_tracks import StageClock, find_tracks
        from service.pipeline.kept_faces import KeptFaces

        self.scratch.write_bytes(data)
        settings = self.settings
        guard = DecodeGuard(max_side=settings.max_video_side, max_pixels=settings.max_decode_pixels)
        try:
            info = probe(self.scratch, max_side=settings.max_video_side, max_duration_s=settings.max_duration_s)
            guard.check_plan(info.width, info.height, planned_frames(info, MAX_FRAMES))
            kept = KeptFaces(KEPT_FACES_BYTES)  # the faces' planes, as serving keeps them with DFS_KEEP_FACES_MB
            tracks, frames_read = find_tracks(
                self.scratch, info, self.detector, settings, MAX_FRAMES, StageClock(), guard=guard, kept=kept
            )
            check_decoded_frames(info, guard.frames, MAX_FRAMES, settings)
            items = plan_crops(
                tracks, self.specs, SamplingOptions(clip_stride=2, max_clips_per_track=2, frames_per_track=2)
            )
            extract_crops(self.scratch, items, self.specs, max_frames=frames_read, threads=1, guard=guard, kept=kept)
        except RequestFailure as exc:
            return f"{http_status(exc)} {exc.code}"
        return f"ok: {len(tracks)} tracks"


_PATH: MediaPath | None = None


def media_path(data: bytes) -> str:
    """:meth:`MediaPath.run` on one shared instance (the detector's graph is built once)."""
    global _PATH
    if _PATH is None:
        _PATH = MediaPath()
    return _PATH.run(data)


# ---- mutations ------------------------------------------------------------------------------------


#: Values that break size, count and offset fields of container headers (MP4 boxes, EBML, TS).
_EXTREMES = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def make_mutator(seeds: list[bytes]):  # noqa: ANN201 - atheris's custom mutator signature
    """libFuzzer's mutations, plus three that fit video files, on any seed.

    libFuzzer keeps only inputs that add coverage, and only the ``service`` package is
    instrumented, so seeds whose bitstreams differ only inside FFmpeg (VP9, the real encoders'
    cuts) would be dropped at start and never mutated. Here a third of the mutations start again
    from a random seed; some cut the file short (truncated uploads), some write an extreme 32-bit
    integer at a random offset (box sizes, counts, offsets), some splice two seeds.
    """
    import random

    import atheris

    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if seeds and rng.random() < 0.3:
            data = rng.choice(seeds)
        pick = rng.random()
        if pick < 0.15 and len(data) > 1:
            out = data[: rng.randrange(1, len(data))]
        elif pick < 0.35 and len(data) >= 8:
            at = rng.randrange(0, len(data) - 4)
            value = rng.choice([*_EXTREMES, len(data), rng.getrandbits(32)])
            out = data[:at] + value.to_bytes(4, rng.choice(["big", "little"])) + data[at + 4 :]
        elif pick < 0.45 and seeds:
            other = rng.choice(seeds)
            out = data[: rng.randrange(0, len(data) + 1)] + other[rng.randrange(0, len(other)) :]
        else:
            out = atheris.Mutate(data, max_size)
        return out[:max_size]

    return mutate


def seed_bytes(inputs: list[str], max_len: int) -> list[bytes]:
    """The files of the corpus folders (or the files) given to libFuzzer, up to ``max_len`` bytes each."""
    files = [f for i in map(Path, inputs) for f in (sorted(i.iterdir()) if i.is_dir() else [i]) if f.is_file()]
    return [f.read_bytes() for f in files if 0 < f.stat().st_size <= max_len]


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
    parser.add_argument(
        "--artifacts", type=Path, default=Path("."), help="folder for crash-/timeout- files (default: .)"
    )
    parser.add_argument(
        "--seeds",
        type=Path,
        default=None,
        help="seed folder to write and fuzz from (default: a fresh temp folder); "
        "ignored when corpus folders or files are given",
    )
    return parser.parse_known_args(argv)


def libfuzzer_argv(args: argparse.Namespace, rest: list[str]) -> list[str]:
    """argv for libFuzzer: our defaults, the caller's flags, and a seeded corpus unless one is given."""
    args.artifacts.mkdir(parents=True, exist_ok=True)
    flags = [a for a in rest if a.startswith("-")]
    inputs = [a for a in rest if not a.startswith("-")]
    defaults = {"-timeout": "30", "-rss_limit_mb": "4096", "-max_len": str(MAX_LEN), "-len_control": "0"}
    flags = [f"{k}={v}" for k, v in defaults.items() if not any(f.startswith(k + "=") for f in flags)] + flags
    if not inputs:
        seeds = args.seeds or Path(tempfile.mkdtemp(prefix="dfs-fuzz-seeds-"))
        write_seeds(seeds)
        inputs = [str(seeds)]
    return [sys.argv[0], f"-artifact_prefix={args.artifacts.resolve()}/", *flags, *inputs]


def main() -> None:
    args, rest = parse_args(sys.argv[1:])
    import logging

    import atheris

    logging.basicConfig(level=logging.ERROR)  # not a line per damaged input ("decoding stopped after ...")

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

    argv = libfuzzer_argv(args, rest)
    inputs = [a for a in argv[1:] if not a.startswith("-")]
    atheris.Setup(argv, one_input, custom_mutator=make_mutator(seed_bytes(inputs, MAX_LEN)))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
