"""``python -m service.cli score PATH_OR_URL ...``: score videos in-process, without a server.

The same pipeline as ``POST /predict`` (the Serving loaded from ``DFS_MODEL_REPOSITORY`` as the app
loads it, ``score_video`` completing the same body, every ``DFS_*`` setting applying), with a
progress bar per video on stderr and the results on stdout: one line per video, JSON Lines
(``--json``) or CSV (``--csv``). The exit status is 0 when every video was scored, 1 when any failed
(its error code is printed), 2 for a usage error, 3 when the models could not be loaded.

Local paths: this runs on the user's own machine, so every file the user names is allowed. Each
local argument is fetched with ``DFS_LOCAL_ROOTS`` set to that file's own folder (for that video
only), so the service's local-path checks still run (a missing file, an empty one, one above
``DFS_MAX_DOWNLOAD_BYTES``) without the server's root restriction. URLs go through the service's
fetcher unchanged, so ``DFS_ALLOW_PRIVATE_URLS`` still applies to them.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError
from tqdm import tqdm

from service.api.limits import check_overrides
from service.api.routes.predict import analysis_options, score_video
from service.api.schemas import PredictRequest
from service.config import Settings, invalid_settings_message, split_csv
from service.errors import RequestFailure
from service.jobs.progress import ProgressTracker
from service.jobs.runner import error_body, predict_body
from service.pipeline.analyse import AnalysisOptions, analyse_video_with_evidence
from service.pipeline.evidence import Evidence
from service.pipeline.fetch import fetched_video
from service.pipeline.result import VideoResult
from service.serving import Serving

log = logging.getLogger("service.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_LOADED = 0, 1, 2, 3
CSV_FIELDS = [
    "input",
    "status",
    "prediction",
    "df_probability",
    "faces",
    "frames_analyzed",
    "annotated",
    "error",
    "status_code",
    "detail",
]
_REFRESH_S = 0.1


def _is_url(source: str) -> bool:
    return urlsplit(source).scheme.lower() in ("http", "https")


def settings_for(source: str, settings: Settings) -> Settings:
    """The settings one video is fetched with: a local file's own folder is its allowed root."""
    if _is_url(source):
        return settings
    text = unquote(urlsplit(source).path) if source.startswith("file://") else source
    try:
        folder = Path(text).expanduser().resolve().parent
    except (OSError, RuntimeError, ValueError):
        return settings  # the fetcher reports the path as unusable
    return settings.model_copy(update={"local_roots": str(folder)})


class Scorer:
    """One loaded Serving scoring one video after another."""

    def __init__(self, serving: Serving, options: AnalysisOptions, annotate: Path | None, show_progress: bool) -> None:
        self.serving = serving
        self.options = options
        self.annotate = annotate
        self.show_progress = show_progress

    async def score(self, source: str) -> dict[str, Any]:
        """``{"input", "ok": true, "result", "annotated"}`` or ``{"input", "ok": false, "error"}``."""
        request_id = uuid.uuid4().hex
        tracker = ProgressTracker("fetch")
        bar = tqdm(
            total=1,
            desc=_short(source),
            file=sys.stderr,
            disable=not self.show_progress,
            leave=True,
            unit="step",
            dynamic_ncols=True,
        )
        refresher = asyncio.create_task(_refresh(bar, tracker, _short(source)))
        try:
            result, annotated = await self._score(source, request_id, tracker)
            return {"input": source, "ok": True, "result": result, "annotated": annotated}
        except Exception as exc:  # noqa: BLE001 - every failure is one video's result, as /predict's error body
            if not isinstance(exc, RequestFailure):
                log.exception("%s: unexpected error", source)
            return {"input": source, "ok": False, "error": error_body(exc, request_id)}
        finally:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
            _draw(bar, tracker, _short(source))
            bar.close()

    async def _score(self, source: str, request_id: str, tracker: ProgressTracker) -> tuple[dict, str | None]:
        found: list[Evidence] = []

        async def analyse(path: Path, request_id: str, options: AnalysisOptions, serving: Serving) -> VideoResult:
            result, evidence = await analyse_video_with_evidence(path, request_id, options, serving, progress=tracker)
            found.append(evidence)
            return result

        settings = self.serving.settings
        started = time.perf_counter()
        async with fetched_video(source, settings_for(source, settings)) as video:
            fetch_ms = (time.perf_counter() - started) * 1000.0
            tracker("fetch", 1, 1)
            result = predict_body(
                await score_video(
                    video,
                    self.options,
                    request_id,
                    self.serving,
                    fetch_ms,
                    analyse=analyse,
                    timeout_s=settings.job_timeout_s,
                )
            )
            annotated = None
            if self.annotate is not None and found and found[0].tracks:
                target = self.annotate / f"{_stem(source)}.annotated.mp4"
                await asyncio.to_thread(found[0].render_annotated, video.path, target)
                annotated = str(target)
        return result, annotated


def _stem(source: str) -> str:
    name = Path(urlsplit(source).path).stem or "video"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _short(source: str, width: int = 32) -> str:
    name = Path(urlsplit(source).path).name or source
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def _draw(bar: tqdm, tracker: ProgressTracker, name: str) -> None:
    _, progress = tracker.snapshot()
    total = max(progress.total, progress.done, 1)
    if bar.total != total:
        bar.total = total
    bar.n = min(progress.done, total)
    bar.set_description(f"{name} [{progress.stage}]", refresh=False)
    bar.refresh()


async def _refresh(bar: tqdm, tracker: ProgressTracker, name: str) -> None:
    """Redraw the bar from the latest report (the pipeline reports from worker threads)."""
    seen = -1
    while True:
        version, _ = tracker.snapshot()
        if version != seen:
            seen = version
            _draw(bar, tracker, name)
        await asyncio.sleep(_REFRESH_S)


# ---- output -------------------------------------------------------------------------------------


def _row(outcome: dict[str, Any]) -> dict[str, Any]:
    if outcome["ok"]:
        result = outcome["result"]
        return {
            "input": outcome["input"],
            "status": "ok",
            "prediction": result["prediction"],
            "df_probability": result["df_probability"],
            "faces": len(result["faces"]),
            "frames_analyzed": result["video"]["frames_analyzed"],
            "annotated": outcome.get("annotated"),
        }
    error = outcome["error"]
    return {
        "input": outcome["input"],
        "status": "failed",
        "error": error["error"],
        "status_code": error["status_code"],
        "detail": error["detail"],
    }


class Output:
    """Writes each video's outcome to stdout as it finishes, in the chosen format."""

    def __init__(self, fmt: str, stream: TextIO) -> None:
        self.fmt = fmt
        self.stream = stream
        self._csv = csv.DictWriter(stream, CSV_FIELDS, extrasaction="ignore") if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writeheader()

    def write(self, outcome: dict[str, Any]) -> None:
        if self.fmt == "json":
            self.stream.write(json.dumps(outcome) + "\n")
        elif self._csv is not None:
            self._csv.writerow(_row(outcome))
        else:
            row = _row(outcome)
            if outcome["ok"]:
                score = "-" if row["df_probability"] is None else f"{row['df_probability']:.4f}"
                extra = f"  annotated: {row['annotated']}" if row.get("annotated") else ""
                self.stream.write(f"{row['input']}\t{row['prediction']}\t{score}\t{row['faces']} face(s){extra}\n")
            else:
                self.stream.write(f"{row['input']}\tERROR {row['error']} ({row['status_code']}): {row['detail']}\n")
        self.stream.flush()


# ---- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.cli",
        description="Score videos with the deepfake-detection pipeline in this process (no server). "
        "DFS_* environment variables apply as for the service (DFS_MODEL_REPOSITORY, DFS_DEVICE, ...).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    score = commands.add_parser(
        "score",
        help="score videos (local paths or http(s) URLs)",
        description="Score each video as POST /predict would and print one result per video on stdout "
        "(a progress bar per video goes to stderr). Any local file may be named (its folder is allowed "
        "for that video, whatever DFS_LOCAL_ROOTS says); URLs are fetched under the service's rules "
        "(DFS_ALLOW_PRIVATE_URLS). Exit status: 0 all scored, 1 any failed (its error code is printed), "
        "2 usage error, 3 models could not be loaded.",
        epilog="examples:  python -m service.cli score clip.mp4 --json | jq .result.df_probability\n"
        "           python -m service.cli score a.mp4 b.mp4 --csv --annotate out/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("inputs", nargs="+", metavar="PATH_OR_URL", help="video files or http(s) URLs")
    fmt = score.add_mutually_exclusive_group()
    fmt.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="json",
        help="JSON Lines: one object per video, {input, ok, result (the /predict body), annotated} "
        "or {input, ok: false, error: {error, detail, request_id, status_code}}",
    )
    fmt.add_argument(
        "--csv", dest="format", action="store_const", const="csv", help=f"CSV with a header: {','.join(CSV_FIELDS)}"
    )
    score.set_defaults(format="text")
    score.add_argument(
        "--annotate",
        type=Path,
        metavar="DIR",
        help="also write DIR/<name>.annotated.mp4: the analysed frames with each face's box "
        "coloured by its score (H.264; videos without a face get none)",
    )
    score.add_argument(
        "--models",
        metavar="NAMES",
        help="comma list of models to load and run (default: DFS_MODELS, else every model found)",
    )
    score.add_argument(
        "--max-frames",
        type=int,
        metavar="N",
        help="frames decoded from the start (default DFS_MAX_FRAMES; at most DFS_JOB_MAX_FRAMES)",
    )
    score.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    score.add_argument("-v", "--verbose", action="store_true", help="log the pipeline's info messages to stderr")
    return parser


async def run_score(args: argparse.Namespace, settings: Settings, stdout: TextIO) -> int:
    if args.models is not None:
        if not split_csv(args.models):
            print("error: --models names no model", file=sys.stderr)
            return EXIT_USAGE
        settings = settings.model_copy(update={"models": args.models})
    serving = Serving(settings)
    try:
        await serving.load()
        if not serving.ready:
            print(f"error: the models could not be loaded: {serving.reason}", file=sys.stderr)
            return EXIT_NOT_LOADED
        body = PredictRequest(
            file_path="cli", models=split_csv(args.models) if args.models else None, max_frames=args.max_frames
        )
        try:
            check_overrides(body, settings, job=True)
            options = analysis_options(body, serving, max_frames_cap=max(settings.job_max_frames, settings.max_frames))
        except Exception as exc:  # noqa: BLE001 - a RequestFailure naming the limit or the unknown model
            print(f"error: {getattr(exc, 'detail', exc)}", file=sys.stderr)
            return EXIT_USAGE
        if args.annotate is not None:
            args.annotate.mkdir(parents=True, exist_ok=True)
        scorer = Scorer(serving, options, args.annotate, show_progress=not args.no_progress)
        output = Output(args.format, stdout)
        failed = 0
        for source in args.inputs:
            outcome = await scorer.score(source)
            output.write(outcome)
            if not outcome["ok"]:
                failed += 1
                error = outcome["error"]
                print(
                    f"{source}: failed: {error['error']} ({error['status_code']}): {error['detail']}", file=sys.stderr
                )
        return EXIT_FAILED if failed else EXIT_OK
    finally:
        await serving.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        parser.error("--max-frames must be at least 1")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = Settings()
    except ValidationError as exc:  # a malformed DFS_* variable: say which
        print(f"error: {invalid_settings_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(run_score(args, settings, sys.stdout))


if __name__ == "__main__":
    sys.exit(main())
