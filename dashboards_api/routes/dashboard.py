"""The web dashboard: one static page (HTML, CSS, JS) that reads the live endpoint.

The page and its assets are public: they hold no data. Every data call the page makes
carries the caller's key in an ``Authorization`` header, never in a URL. The content
security policy keeps the page to this origin: no external scripts, styles or fonts.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static"

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["dashboard"])


def static_file(path: Path, media_type: str) -> FileResponse:
    """A page asset with the headers that keep it to this origin (also the catalog's)."""
    return FileResponse(path, media_type=media_type, headers=HEADERS)


def _static(name: str, media_type: str) -> FileResponse:
    return static_file(STATIC / name, media_type)


@router.get("/dashboard", include_in_schema=False)
def dashboard() -> FileResponse:
    """The dashboard page."""
    return _static("dashboard.html", "text/html; charset=utf-8")


@router.get("/dashboard/dashboard.js", include_in_schema=False)
def dashboard_script() -> FileResponse:
    """The page's script: fetches classes and history, reads the live stream, draws."""
    return _static("dashboard.js", "text/javascript; charset=utf-8")


@router.get("/dashboard/dashboard.css", include_in_schema=False)
def dashboard_style() -> FileResponse:
    """The page's style sheet."""
    return _static("dashboard.css", "text/css; charset=utf-8")
