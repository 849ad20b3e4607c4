"""One shell for every browser page the API serves: the dashboard, the catalog, the posture.

Why: each page is the same document around its own body (the head, the brand bar, and the
key form whose key never travels in a URL) with its own script and style sheet, served
under the same headers. ``page_router`` renders the shell once and serves the page and its
two assets; the page's folder holds only ``<name>.html`` (the body), ``<name>.js`` and
``<name>.css``.

The pages and their assets are public: they hold no data. Every data call a page makes
carries the caller's key in an ``Authorization`` header, never in a URL. The content
security policy keeps a page to this origin: no external scripts, styles or fonts.

Why here: ``dashboards_api`` is the lowest package that serves HTTP; ``catalog`` and the
governance pages mount into its app and already import it, so none of the three imports
a package above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

SHELL = Path(__file__).resolve().parent / "static" / "shell.html"

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
HTML = "text/html; charset=utf-8"


@dataclass(frozen=True)
class Page:
    """A page at ``/<name>``, its body in ``folder/<name>.html`` and its assets at
    ``/<name>/<name>.js`` and ``/<name>/<name>.css`` (from the same folder)."""

    name: str
    """The path segment and the file stem: ``dashboard``."""
    folder: Path
    """Where the body, script and style sheet are."""
    title: str
    """Shown after "privmesh" in the tab and in the brand bar."""
    tagline: str
    """The line under the title (HTML)."""
    key_placeholder: str = "paste a governance key"
    """What the key input asks for."""
    styles: tuple[str, ...] = ()
    """Style sheets (URLs on this origin) loaded before the page's own."""
    header: str = ""
    """HTML in the top bar between the brand and the key form."""

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or not self.name.islower():
            raise ValueError(f"page name {self.name!r} must be a lower-case identifier")

    def asset(self, suffix: str) -> str:
        """The URL of the page's script (``js``) or style sheet (``css``)."""
        return f"/{self.name}/{self.name}.{suffix}"

    def render(self) -> str:
        """The whole document: the shell around the page's body."""
        styles = (*self.styles, self.asset("css"))
        return Template(SHELL.read_text(encoding="utf-8")).substitute(
            title=self.title,
            tagline=self.tagline,
            placeholder=self.key_placeholder,
            styles="\n".join(f'  <link rel="stylesheet" href="{s}">' for s in styles),
            script=self.asset("js"),
            header=f"{self.header.rstrip()}\n" if self.header.strip() else "",
            body=(self.folder / f"{self.name}.html").read_text(encoding="utf-8").rstrip("\n"),
        )


def static_file(path: Path, media_type: str) -> FileResponse:
    """A page asset with the headers that keep it to this origin."""
    return FileResponse(path, media_type=media_type, headers=HEADERS)


def page_router(page: Page, tag: str) -> APIRouter:
    """Routes for ``page`` (rendered now, so a missing file fails at start) and its assets."""
    document = page.render().encode("utf-8")
    router = APIRouter(tags=[tag])

    @router.get(f"/{page.name}", include_in_schema=False)
    def shell() -> Response:
        """The page (holds no data; its calls carry the caller's key)."""
        return Response(document, media_type=HTML, headers=HEADERS)

    @router.get(page.asset("js"), include_in_schema=False)
    def script() -> FileResponse:
        """The page's script."""
        return static_file(page.folder / f"{page.name}.js", "text/javascript; charset=utf-8")

    @router.get(page.asset("css"), include_in_schema=False)
    def style() -> FileResponse:
        """The page's style sheet."""
        return static_file(page.folder / f"{page.name}.css", "text/css; charset=utf-8")

    return router
