"""The analyst's page at / in a real headless Chromium, against a real service with five models.

Chromium is Debian's (/usr/bin/chromium, installed by .ci/run), driven by Playwright for Python with
``executable_path`` (Playwright's own browser download cannot work offline). The service is keyed,
so the page's key box is exercised too: a submit without the key is refused with a message that
opens the box, and with it the job runs. Screenshots (desktop, full page, and a phone-sized
viewport) are written to tmp/artifacts/ for a person to look at.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.conftest import REPO_ROOT, FileServer, LiveService, start_service, stop_service

# slow: the first test also exports a model and starts a service with five, on a shared CPU
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "tmp" / "artifacts"
BUNDLE = REPO_ROOT / "model_repository"
KEY = "web-page-test-key"
ANALYSIS_TIMEOUT_MS = 300_000  # five real models on a shared 2-core CPU


@pytest.fixture(scope="module")
def keyed_service(videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """The committed default bundle (five models), jobs in a fresh data folder, an API key required.

    The bundled PCL-I2G was exported without its patch map, so a random-init one exported with it
    (version 2, which the service then serves) stands in: the page then has a heat map to show.
    """
    from export.__main__ import export_model

    folder = tmp_path_factory.mktemp("web-page")
    repository = folder / "model_repository"
    shutil.copytree(BUNDLE, repository)
    export_model(
        "pcl_i2g",
        repository,
        random_init=True,
        seed=3,
        heatmap=True,
        version=2,
        model_options={"backbone": "mobilenetv2_100", "head_norm": False},
    )
    service = start_service(
        {
            "DFS_MODEL_REPOSITORY": str(repository),
            "DFS_DATA_DIR": str(folder / "data"),
            "DFS_API_KEYS": KEY,
            "DFS_ALLOW_PRIVATE_URLS": "true",  # the URL test fetches from the loopback file server
            "DFS_LOCAL_ROOTS": str(videos["one_face"].parent),
            "DFS_MAX_CONCURRENT_REQUESTS": "2",
        },
        folder / "service.log",
    )
    yield service
    stop_service(service)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium package (.ci/run does, as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


class PageWatch:
    """Every request the page makes and every error it logs (a CSP violation is a console error)."""

    def __init__(self, page: object) -> None:
        self.urls: list[str] = []
        self.errors: list[str] = []
        self.failed: list[tuple[int, str]] = []  # (status, path) of every answer >= 400
        page.on("request", lambda request: self.urls.append(request.url))
        page.on(
            "response",
            lambda response: (
                response.status >= 400 and self.failed.append((response.status, urlparse(response.url).path))
            ),
        )
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _console(self, message: object) -> None:
        # Chromium logs every answer >= 400 as an error; those are checked, with their URL, in `failed`
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def unexpected_failures(self) -> list[tuple[int, str]]:
        """Failed answers other than a heat map the job has none of (404 by contract)."""
        return [(status, path) for status, path in self.failed if not (status == 404 and "/heatmaps/" in path)]

    def outside_hosts(self) -> list[str]:
        """Requests to anything but loopback: blob: URLs are the page's own (fetched media)."""
        outside = []
        for url in self.urls:
            inner = url[len("blob:") :] if url.startswith("blob:") else url
            parsed = urlparse(inner)
            if parsed.scheme not in ("http", "https") or parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
                outside.append(url)
        return outside


def open_page(browser: object, service: LiveService, **context: object) -> tuple[object, PageWatch]:
    """A new page at / with the models loaded. Its CSP forbids eval: wait_for_function gets functions, not expressions."""
    page = browser.new_context(**context).new_page()
    watch = PageWatch(page)
    page.goto(f"{service.base_url}/")
    page.wait_for_function("() => document.getElementById('health').dataset.healthy === 'true'")
    return page, watch


def enter_key(page: object) -> None:
    if page.locator("#key-box").get_attribute("open") is None:  # the page opens it itself after a 401
        page.locator("#key-box > summary").click()
    page.get_by_label("API key, if this service asks for one").fill(KEY)
    page.get_by_role("button", name="Use key").click()
    assert page.locator("#key-state").inner_text() == "Key saved for this tab."


def wait_for_result(page: object) -> None:
    page.locator("#result").wait_for(state="visible", timeout=ANALYSIS_TIMEOUT_MS)
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()


def check_result(page: object, service: LiveService) -> tuple[dict, int]:
    """What a finished job shows, checked against the service's own answer; returns that answer and
    how many heat maps the page shows."""
    job_id = page.locator("#download-json").get_attribute("download").removeprefix("deepfake-").removesuffix(".json")
    status = httpx.get(f"{service.base_url}/jobs/{job_id}", headers={"X-API-Key": KEY}, timeout=30).json()
    assert status["status"] == "done", status
    result = status["result"]
    # the download link saves exactly the job's result
    with page.expect_download() as download:
        page.get_by_role("link", name="Download JSON").click()
    assert download.value.suggested_filename == f"deepfake-{job_id}.json"
    assert json.loads(Path(download.value.path()).read_text()) == result

    verdict = page.locator("#verdict")
    assert verdict.get_attribute("data-prediction") == result["prediction"] in ("REAL", "FAKE")
    assert f"{result['df_probability'] * 100:.1f} %" in verdict.inner_text()

    cards = page.locator("li.face-card")
    assert cards.count() == len(result["faces"]) >= 1
    heatmaps = 0
    for index, face in enumerate(result["faces"]):
        card = cards.nth(index)
        assert card.get_attribute("data-track") == str(face["track_id"])
        for model in face["models"]:
            assert card.locator("table.scores th[scope=row]", has_text=model).count() == 1, model
        # the plot: one series per model of the timeline, each with drawn spans inside the plot area
        plot = card.locator("svg.timeline-plot")
        plot.wait_for(state="visible")
        timeline_models = {entry["model"] for entry in face["timeline"]}
        assert timeline_models, "the service sent a timeline for the face"
        series = plot.locator("g.series")
        assert {series.nth(i).get_attribute("data-model") for i in range(series.count())} == timeline_models
        assert plot.locator("path.span").count() == len(face["timeline"])
        box = plot.bounding_box()
        assert box and box["width"] > 200 and box["height"] > 60, box
        drawn = plot.evaluate("(svg) => [...svg.querySelectorAll('path.span')].map(p => p.getBBox().width)")
        assert all(width >= 2 for width in drawn), drawn
        # the thumbnail came through the key-carrying fetch and decoded
        thumbnail = card.locator("img.thumbnail")
        thumbnail.wait_for(state="visible")
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle())
        heatmap = httpx.get(
            f"{service.base_url}/jobs/{job_id}/heatmaps/{face['track_id']}.png", headers={"X-API-Key": KEY}, timeout=30
        )
        assert heatmap.status_code in (200, 404), heatmap.text
        if heatmap.status_code == 200:
            figure = card.locator("figure.heatmap")
            figure.wait_for(state="visible")
            page.wait_for_function(
                "(img) => img.complete && img.naturalWidth > 0", arg=figure.locator("img").element_handle()
            )
            heatmaps += 1
        else:
            assert card.locator("figure.heatmap").is_hidden()

    # the annotated video plays in the page's player: metadata loaded, frame size and duration known
    video = page.locator("video#annotated")
    video.wait_for(state="visible", timeout=60_000)
    page.wait_for_function("(v) => v.readyState >= 1", arg=video.element_handle(), timeout=60_000)
    size = page.evaluate("(v) => [v.videoWidth, v.videoHeight, v.duration]", video.element_handle())
    assert size[0] > 0 and size[1] > 0 and size[2] > 0, size
    return result, heatmaps


def test_upload_a_video_and_read_the_verdict(
    browser: object, keyed_service: LiveService, videos: dict[str, Path]
) -> None:
    page, watch = open_page(browser, keyed_service, viewport={"width": 1280, "height": 900})
    file_input = page.get_by_label("Choose a video file")
    file_input.set_input_files(str(videos["one_face"]))
    assert "one_face.mp4" in page.locator("#chosen-file").inner_text()

    # without the key the service refuses, and the page says so and opens the key box
    page.get_by_role("button", name="Analyse file").click()
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=60_000)
    assert "API key" in error.inner_text()
    assert page.locator("#key-box").get_attribute("open") is not None
    assert watch.failed == [(401, "/jobs/upload")]
    watch.failed.clear()

    enter_key(page)
    page.get_by_role("button", name="Analyse file").click()
    assert page.locator("#progress").is_visible()
    assert page.locator("#progress-text").get_attribute("aria-live") == "polite"
    wait_for_result(page)
    assert page.locator("#progress-text").inner_text().startswith("Done")
    result, heatmaps = check_result(page, keyed_service)
    assert heatmaps == len(result["faces"]), "PCL-I2G gives every face a heat map"
    # the random-init stand-in says so, and the page shows the service's warnings
    assert result["warnings"] and page.locator("#warnings li").count() == len(result["warnings"])

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_page.png"), full_page=True)
    assert not watch.outside_hosts(), watch.outside_hosts()
    assert not watch.errors, watch.errors
    assert not watch.unexpected_failures(), watch.failed
    # the media came through fetch() with the key (blob: URLs), the API calls went to this service
    assert any(url.startswith(f"{keyed_service.base_url}/jobs/") for url in watch.urls)


def test_a_url_on_a_phone_sized_screen(browser: object, keyed_service: LiveService, file_server: FileServer) -> None:
    page, watch = open_page(
        browser, keyed_service, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    enter_key(page)
    page.get_by_label("Video URL").fill(file_server.url("two_faces.mp4"))
    page.get_by_label("Video URL").press("Enter")  # the keyboard submits the form
    wait_for_result(page)
    result, _ = check_result(page, keyed_service)
    assert len(result["faces"]) == 2

    # one column: nothing wider than the screen, the face cards stacked
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    first, second = (page.locator("li.face-card").nth(i).bounding_box() for i in range(2))
    assert second["y"] >= first["y"] + first["height"] - 1 and abs(first["x"] - second["x"]) < 1

    # drawn at the width it is shown at, so its labels keep their size on a small screen
    plot = page.locator("li.face-card svg.timeline-plot").first
    view_width = float(plot.get_attribute("viewBox").split()[2])
    assert abs(view_width - plot.bounding_box()["width"]) <= 2, (view_width, plot.bounding_box())

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#verdict-heading").evaluate("(heading) => heading.scrollIntoView()")
    page.screenshot(path=str(ARTIFACTS / "web_page_phone.png"))  # what a phone shows of the verdict
    page.screenshot(path=str(ARTIFACTS / "web_page_phone_full.png"), full_page=True)
    assert not watch.outside_hosts(), watch.outside_hosts()
    assert not watch.errors, watch.errors
    assert not watch.unexpected_failures(), watch.failed


def test_cancel_a_queued_job(browser: object, keyed_service: LiveService, tmp_path: Path) -> None:
    """One job runs at a time (DFS_JOBS_CONCURRENCY=1): behind a long one, the page's job waits
    queued, and its Cancel button cancels it on the service."""
    from tests import media

    long_video = media.face_video(tmp_path / "long.mp4", frames=240)
    headers = {"X-API-Key": KEY}
    with httpx.Client(base_url=keyed_service.base_url, headers=headers, timeout=60) as client:
        with long_video.open("rb") as handle:
            blocker = client.post("/jobs/upload", files={"file": ("long.mp4", handle, "video/mp4")})
        assert blocker.status_code == 202, blocker.text
        try:
            page, watch = open_page(browser, keyed_service, viewport={"width": 1024, "height": 768})
            enter_key(page)
            page.get_by_label("Video URL").fill(f"{keyed_service.base_url}/not-fetched-before-cancel.mp4")
            with page.expect_response(lambda response: response.request.method == "POST") as submitted:
                page.get_by_role("button", name="Analyse URL").click()
            job_id = submitted.value.json()["job_id"]
            page.wait_for_function("() => document.getElementById('progress-stage').textContent.startsWith('Queued')")
            cancel = page.get_by_role("button", name="Cancel")
            assert cancel.is_enabled()
            cancel.focus()
            page.keyboard.press("Enter")  # keyboard-usable: a real button
            page.wait_for_function("() => document.getElementById('progress-text').textContent === 'Cancelled'")
            assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
            assert page.get_by_role("button", name="Analyse URL").is_enabled() and not cancel.is_enabled()
            assert page.locator("#result").is_hidden() and page.locator("#error").is_hidden()
            assert not watch.outside_hosts() and not watch.errors and not watch.unexpected_failures(), watch.failed
        finally:
            client.delete(f"/jobs/{blocker.json()['job_id']}")


def test_drop_a_file_and_watch_its_upload(browser: object, keyed_service: LiveService, tmp_path: Path) -> None:
    """A file dropped onto the drop zone starts at once; the bar follows the upload (XHR progress)
    to 100 % before the job's own progress takes over; Cancel then stops the job on the service."""
    import base64

    from tests import media

    dropped = media.face_video(tmp_path / "dropped.mp4", frames=240)
    page, watch = open_page(browser, keyed_service, viewport={"width": 1280, "height": 900})
    enter_key(page)
    # every state the progress box goes through, recorded by the page itself as it changes
    page.evaluate("""() => {
        window.progressSeen = [];
        const bar = document.getElementById('progress-bar'), stage = document.getElementById('progress-stage');
        const record = () => window.progressSeen.push([stage.textContent, bar.getAttribute('value')]);
        new MutationObserver(record).observe(bar, {attributes: true, attributeFilter: ['value']});
        new MutationObserver(record).observe(stage, {childList: true, characterData: true, subtree: true});
    }""")
    transfer = page.evaluate_handle(
        """([name, data]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: 'video/mp4'}));
        return transfer;
    }""",
        [dropped.name, base64.b64encode(dropped.read_bytes()).decode()],
    )
    zone = page.locator("#drop-zone")
    zone.dispatch_event("dragover", {"dataTransfer": transfer})
    assert "dragging" in zone.get_attribute("class")
    with page.expect_response(lambda response: response.request.method == "POST") as submitted:
        zone.dispatch_event("drop", {"dataTransfer": transfer})
    assert submitted.value.status == 202, submitted.value.text()
    job_id = submitted.value.json()["job_id"]
    assert "dragging" not in zone.get_attribute("class")
    assert f"Chosen: {dropped.name}" in page.locator("#chosen-file").inner_text()
    page.wait_for_function("() => /^(Queued|Running)/.test(document.getElementById('progress-stage').textContent)")

    seen = page.evaluate("() => window.progressSeen")
    uploading = [float(value) for stage, value in seen if stage.startswith("Uploading") and value is not None]
    assert all(stage.endswith(dropped.name) for stage, _ in seen if stage.startswith("Uploading")), seen
    assert uploading and uploading == sorted(uploading) and uploading[-1] == 1.0, seen
    first_job_state = next(i for i, (stage, _) in enumerate(seen) if not stage.startswith("Uploading"))
    assert all(not stage.startswith("Uploading") for stage, _ in seen[first_job_state:]), seen

    headers = {"X-API-Key": KEY}
    status = httpx.get(f"{keyed_service.base_url}/jobs/{job_id}", headers=headers, timeout=30).json()
    assert status["status"] in ("queued", "running", "done"), status
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_function("() => document.getElementById('progress-text').textContent === 'Cancelled'")
    final = httpx.get(f"{keyed_service.base_url}/jobs/{job_id}", headers=headers, timeout=30).json()
    assert final["status"] in ("cancelled", "done"), final  # a job that finished first cannot be cancelled
    assert not watch.outside_hosts() and not watch.errors and not watch.unexpected_failures(), watch.failed
