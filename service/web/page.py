"""``GET /``: the analyst's page; ``/web/*``: its script, stylesheet and icon.

The page is static files (``static/``), served by this process: no CDN, no web font, no build step,
so it works on a machine without internet like the rest of the service. It talks to the jobs API
(``POST /jobs``, ``GET /jobs/{id}``) with relative URLs, so it also works behind a proxy that serves
the service under a path prefix.

The page answers without an API key (a person must be able to open it to type one in), as do its
assets under ``/web/`` (service/api/auth.py); the API calls it makes carry the key. Its
Content-Security-Policy allows only this origin (and the ``blob:`` URLs the page makes for fetched
media), so even a bug in the page cannot load or send anything elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from service.api.auth import WEB_ASSETS_PREFIX

STATIC_DIR = Path(__file__).with_name("static")
_ASSETS_MOUNT = WEB_ASSETS_PREFIX.rstrip("/")

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "img-src 'self' blob:",  # thumbnails and heat maps are fetched with the key header, shown from blob:
        "media-src 'self' blob:",  # the annotated video, likewise
        "connect-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",  # forms are handled by the script, never posted by the browser
        "frame-ancestors 'none'",
    )
)

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag), so an upgraded service serves its new page
}


def install_web_page(app: FastAPI) -> None:
    """Serve ``/`` and ``/web/*``."""
    app.mount(_ASSETS_MOUNT, StaticFiles(directory=STATIC_DIR), name="web-static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)
