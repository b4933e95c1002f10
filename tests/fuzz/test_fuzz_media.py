"""The media fuzzer (tests/fuzz/fuzz_media.py) for a bounded time in CI, and its seeds."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.fuzz.fuzz_media import media_path, write_seeds

pytestmark = pytest.mark.fuzz

SCRIPT = REPO_ROOT / "tests" / "fuzz" / "fuzz_media.py"
#: Seconds of fuzzing in CI (libFuzzer's -max_total_time), and a cap on inputs for fast machines.
FUZZ_SECONDS = int(os.environ.get("DFS_FUZZ_MEDIA_SECONDS", "60"))
FUZZ_RUNS = int(os.environ.get("DFS_FUZZ_MEDIA_RUNS", "2000"))
#: Memory one input may add on top of the fuzzer's starting peak before libFuzzer calls it a leak.
FUZZ_RSS_HEADROOM_MB = 4096


def rss_limit_mb() -> int:
    """libFuzzer's ``-rss_limit_mb`` for a child of this process.

    libFuzzer reads the peak RSS from ``getrusage``, and Linux carries a parent's peak into a
    forked-and-exec'd child: late in a full test run pytest holds several GB, and the fuzzer starts
    "over" a fixed 4096 MB limit before running one input (CI saw 4802 MB at INITED). The limit is
    that inherited peak plus the headroom, so it still catches an input that balloons memory."""
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return inherited_mb + FUZZ_RSS_HEADROOM_MB


def keep(crash: Path) -> Path:
    """Copy a crashing input out of pytest's temp folder to ``tmp/fuzz_crashes/`` (git-ignored)."""
    target = REPO_ROOT / "tmp" / "fuzz_crashes" / crash.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(crash.read_bytes())
    return target


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


def test_seeds_are_real_videos_of_each_container(seeds: list[Path]) -> None:
    """Every seed decodes cleanly through the fuzzed path, and the astronaut seeds find her face:
    mutations start from inputs that reach detection, not from ones refused at the header."""
    outcomes = {p.name: media_path(p.read_bytes()) for p in seeds}
    assert {"h264.mp4", "vp8.webm", "vp9.webm", "h264.mkv", "switch.ts"} <= set(outcomes)
    assert outcomes.pop("switch.ts") == "ok: 0 tracks"  # flat grey frames: decoded through both sizes
    assert set(outcomes.values()) == {"ok: 1 tracks"}, outcomes  # the astronaut, and the shared cuts' faces
    assert all(p.stat().st_size < 64 * 1024 for p in seeds), "seeds stay small"


def test_fuzz_media_bounded(seeds: list[Path], tmp_path: Path) -> None:
    """libFuzzer mutates the seeds for FUZZ_SECONDS (or FUZZ_RUNS inputs); any crash fails the test
    and leaves its input for tests/fuzz/corpus_regressions/."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for seed in seeds:
        (corpus / seed.name).write_bytes(seed.read_bytes())
    artifacts = tmp_path / "artifacts"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            f"--artifacts={artifacts}",
            f"-max_total_time={FUZZ_SECONDS}",
            f"-runs={FUZZ_RUNS}",
            "-timeout=30",
            f"-rss_limit_mb={rss_limit_mb()}",
            "-print_final_stats=1",
            str(corpus),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 240,
    )
    log = result.stdout + result.stderr
    crashes = [keep(c) for c in sorted(artifacts.glob("*"))] if artifacts.is_dir() else []
    assert result.returncode == 0 and not crashes, (
        f"the media fuzzer crashed (rc {result.returncode}); inputs kept as {[str(c) for c in crashes]}: move "
        f"the small ones to tests/fuzz/corpus_regressions/\n{log[-6000:]}"
    )
    assert "Done " in log, log[-3000:]
