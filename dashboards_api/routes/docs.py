"""The API's own documentation: the OpenAPI document, Swagger UI and ReDoc, offline.

FastAPI's default pages load Swagger UI and ReDoc from a CDN, so ``/docs`` is blank on a
machine without internet. Here the pages load their scripts, style sheet and icon from
this API, which serves them from the installed ``fastapi-offline`` package; a content
security policy keeps the pages to this origin (the browser refuses anything else).
Every route has a fixed path, so each is one route template in the request metrics.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response

OPENAPI_URL = "/openapi.json"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"

# The files of the installed package, by the name they are served under.
ASSET_DIR = Path(str(files("fastapi_offline") / "static"))
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
ASSET_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=86400"}
# ReDoc's side menu shows Redocly's logo from their CDN, and no option turns it off: the
# script is served with an empty image in its place, so the page asks no other origin.
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_IMAGE = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"

# Nothing may come from another origin. Swagger UI starts from an inline script, allowed
# by its hash alone; both viewers style themselves inline and ReDoc runs its search in a
# worker it builds from a blob.
CSP = (
    "default-src 'none'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "worker-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
# Swagger UI's defaults that would reach another origin: its validator badge.
SWAGGER_PARAMETERS: dict[str, Any] = {"validatorUrl": None}

router = APIRouter(tags=["docs"])


def _root(request: Request) -> str:
    """The path prefix the API is served under (behind a proxy), or ''."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _asset(request: Request, name: str) -> str:
    return f"{_root(request)}{ASSETS_URL}/{name}"


def _page(response: HTMLResponse) -> HTMLResponse:
    """``response`` with a policy that allows exactly its own inline scripts."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in INLINE_SCRIPT.findall(bytes(response.body).decode())
    )
    response.headers.update({**HEADERS, "Content-Security-Policy": CSP.format(hashes=hashes)})
    return response


@router.get(OPENAPI_URL, include_in_schema=False)
def openapi(request: Request) -> JSONResponse:
    """The OpenAPI document of this app."""
    return JSONResponse(request.app.openapi())


@router.get(DOCS_URL, include_in_schema=False)
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over the OpenAPI document, with its assets from this API."""
    return _page(
        get_swagger_ui_html(
            openapi_url=_root(request) + OPENAPI_URL,
            title=f"{request.app.title} - Swagger UI",
            oauth2_redirect_url=None,  # the API takes bearer keys, no OAuth2 flow
            swagger_js_url=_asset(request, "swagger-ui-bundle.js"),
            swagger_css_url=_asset(request, "swagger-ui.css"),
            swagger_favicon_url=_asset(request, "favicon.png"),
            swagger_ui_parameters={
                **SWAGGER_PARAMETERS,
                **(request.app.swagger_ui_parameters or {}),
            },
        )
    )


@router.get(REDOC_URL, include_in_schema=False)
def redoc(request: Request) -> HTMLResponse:
    """ReDoc over the OpenAPI document, with its script from this API (no web fonts)."""
    return _page(
        get_redoc_html(
            openapi_url=_root(request) + OPENAPI_URL,
            title=f"{request.app.title} - ReDoc",
            redoc_js_url=_asset(request, "redoc.standalone.js"),
            redoc_favicon_url=_asset(request, "favicon.png"),
            with_google_fonts=False,
        )
    )


@cache
def asset_bytes(name: str) -> bytes:
    """The served content of asset ``name``: the package's file (read once), ReDoc's
    without its CDN logo."""
    content = (ASSET_DIR / name).read_bytes()
    return content.replace(REDOC_LOGO, EMPTY_IMAGE) if name == "redoc.standalone.js" else content


def _asset_route(name: str, media_type: str) -> None:
    def asset() -> Response:
        return Response(asset_bytes(name), media_type=media_type, headers=ASSET_HEADERS)

    asset.__doc__ = f"The documentation pages' {name} (from the installed fastapi-offline)."
    router.add_api_route(f"{ASSETS_URL}/{name}", asset, methods=["GET"], include_in_schema=False)


for _name, _media_type in ASSETS.items():
    _asset_route(_name, _media_type)
