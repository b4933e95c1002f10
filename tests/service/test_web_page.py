"""The web page at / and its files, in-process: content types, what the page may load, /docs beside it.

The browser side (uploading a video, the verdict, the plot, the player) is tests/e2e/test_web_page.py.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.web.page import STATIC_DIR

TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html"}


class _Links(HTMLParser):
    """Every src and href in the page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def page_links(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.urls


@pytest.fixture()
def client(tmp_path: Path) -> TestClient:
    # no lifespan (no `with`): nothing is loaded, the page and its files need no model
    return TestClient(create_app(Settings(model_repository=tmp_path / "none", device="cpu")))


def test_page_is_html_with_a_policy_that_allows_only_this_origin(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "http" not in policy, "the policy names no other origin"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert '<html lang="en">' in response.text and 'name="viewport"' in response.text


def test_every_file_the_page_names_is_served_with_its_type(client: TestClient) -> None:
    links = page_links(client.get("/").text)
    assets = [url for url in links if url.startswith("web/")]
    assert {"web/app.js", "web/style.css", "web/icon.svg"} <= set(assets), links
    for url in assets:
        response = client.get(f"/{url}")
        assert response.status_code == 200, url
        assert response.headers["content-type"].startswith(TYPES[Path(url).suffix]), (
            url,
            response.headers["content-type"],
        )
    # the page's other links are the service's own pages, relative too (a path prefix keeps working)
    assert set(links) - set(assets) == {"#main", "docs", "#"}, links


def test_script_modules_import_only_files_that_are_served(client: TestClient) -> None:
    """A module script that imports a missing file fails as a whole, silently: check each import."""
    scripts = sorted(STATIC_DIR.glob("*.js"))
    assert len(scripts) >= 4
    for script in scripts:
        for target in re.findall(r'^import .* from "([^"]+)";$', script.read_text(), flags=re.M):
            assert target.startswith("./"), (script.name, target)
            assert client.get(f"/web/{target[2:]}").status_code == 200, (script.name, target)


def test_static_files_load_nothing_from_outside() -> None:
    """No CDN, no web font, no absolute URL: in CSS no url() or @import at all, in the page no
    scheme or protocol-relative link, in scripts no fetch of an absolute address."""
    css = (STATIC_DIR / "style.css").read_text()
    assert "url(" not in css and "@import" not in css and "@font-face" not in css
    html = (STATIC_DIR / "index.html").read_text()
    assert not [url for url in page_links(html) if re.match(r"^([a-z]+:|//)", url)]
    for script in STATIC_DIR.glob("*.js"):
        # the SVG namespace is an identifier, not something fetched
        addresses = set(re.findall(r"https?://[^\s\"'`]+", script.read_text())) - {"http://www.w3.org/2000/svg"}
        assert not addresses, (script.name, addresses)
        assert "//" not in "".join(re.findall(r'fetch\(\s*["\'`]([^"\'`]*)', script.read_text()))


def test_docs_still_work_beside_the_page(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    assert client.get("/docs/static/swagger-ui.css").headers["content-type"].startswith("text/css")
    assert "/" not in client.get("/openapi.json").json()["paths"], "the page is not an API route"


def test_page_and_its_files_answer_without_a_key_and_the_api_does_not(tmp_path: Path) -> None:
    """The page is where a person types the key, so it cannot need one; the API behind it does."""
    app = create_app(Settings(model_repository=tmp_path / "none", device="cpu", api_keys="page-test-key"))
    client = TestClient(app)
    for path in ("/", "/web/app.js", "/web/style.css", "/docs"):
        assert client.get(path).status_code == 200, path
    assert client.get("/models").status_code == 401
    assert client.get("/web/../models").status_code in (401, 404), "a dotted path does not slip past the check"
    assert client.get("/models", headers={"X-API-Key": "page-test-key"}).status_code == 200
