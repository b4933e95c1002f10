"""Every input the fuzzers found a bug with, kept and replayed: a clean documented answer each time.

``corpus_regressions/`` holds the media fuzzer's crashing inputs (small files); each goes through
the fuzzed path in-process (:func:`tests.fuzz.fuzz_media.media_path`) and, as an upload, through the
real server, where it must end as a documented error or a scored video, never a 500.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.conftest import LiveService
from tests.fuzz.fuzz_media import media_path

pytestmark = pytest.mark.fuzz

CORPUS = Path(__file__).resolve().parent / "corpus_regressions"
SAVED = sorted(p for p in CORPUS.iterdir() if p.is_file() and not p.name.startswith((".", "README")))

#: What each saved input must end as (its status and code), where the fix decided it.
EXPECTED = {
    # a Matroska CodecID FFmpeg has no decoder for: PyAV's codec_context is None, and probe's
    # ctx.width was an AttributeError (a 500 through the API)
    "mkv_unknown_codec_id.mkv": "415 undecodable",
}


def test_every_saved_input_has_an_expectation() -> None:
    assert {p.name for p in SAVED} == set(EXPECTED), "say what each file in corpus_regressions/ must end as"


@pytest.mark.parametrize("path", SAVED, ids=[p.name for p in SAVED])
def test_saved_crash_is_a_documented_outcome_in_process(path: Path) -> None:
    assert media_path(path.read_bytes()) == EXPECTED[path.name]


@pytest.mark.parametrize("path", SAVED, ids=[p.name for p in SAVED])
def test_saved_crash_is_a_documented_error_over_http(fuzz_service: LiveService, path: Path) -> None:
    with fuzz_service.client(timeout=120) as client, path.open("rb") as handle:
        response = client.post("/predict/upload", files={"file": (path.name, handle, "application/octet-stream")})
        body = response.json()
        assert f"{response.status_code} {body.get('error')}" == EXPECTED[path.name], body
        assert set(body) == {"error", "detail", "request_id"}
        assert body["request_id"] == response.headers["x-request-id"]
        assert client.get("/healthcheck").status_code == 200
