"""``GET /docs``: Swagger UI served from this process, not from a CDN.

FastAPI's own /docs page loads Swagger UI's script and stylesheet from cdn.jsdelivr.net and its
favicon from fastapi.tiangolo.com, so on a machine without internet (the service's normal place:
it contacts nothing but the videos it fetches) the page is blank. The ``fastapi-offline`` package
ships those files (Swagger UI 5, which renders FastAPI's OpenAPI 3.1); they are mounted under
``/docs/static`` and the page is FastAPI's own ``get_swagger_ui_html`` pointed at them. Swagger UI's
online validator badge (validator.swagger.io) is switched off for the same reason. ReDoc is not
served: one documentation page is enough. ``/`` is the analyst's page (service/web/page.py),
which links here.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.api.auth import DOCS_ASSETS_PREFIX

DOCS_PATH = "/docs"
_ASSETS_MOUNT = DOCS_ASSETS_PREFIX.rstrip("/")


def assets_folder() -> Path:
    """The folder of swagger-ui-bundle.js, swagger-ui.css and favicon.png in the installed fastapi-offline."""
    return Path(str(files("fastapi_offline") / "static"))


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI's files and the /docs page; create ``app`` with ``docs_url=None, redoc_url=None``."""
    app.mount(_ASSETS_MOUNT, StaticFiles(directory=assets_folder()), name="docs-static")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")  # behind a proxy that strips a prefix
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{_ASSETS_MOUNT}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{_ASSETS_MOUNT}/swagger-ui.css",
            swagger_favicon_url=f"{root}{_ASSETS_MOUNT}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )
