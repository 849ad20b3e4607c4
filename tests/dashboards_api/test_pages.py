"""The shared page shell: every page is the same document around its own body."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dashboards_api.pages import Page, page_router


def _page(folder: Path, styles: tuple[str, ...] = (), header: str = "") -> Page:
    (folder / "demo.html").write_text('  <main id="demo-body">body</main>\n', encoding="utf-8")
    (folder / "demo.js").write_text("void 0;\n", encoding="utf-8")
    (folder / "demo.css").write_text("main {}\n", encoding="utf-8")
    return Page(
        name="demo",
        folder=folder,
        title="demo page",
        tagline="what it shows",
        styles=styles,
        header=header,
    )


def test_the_shell_wraps_the_body_with_the_key_form_and_own_assets(tmp_path: Path) -> None:
    """The document has the title, tagline, key form, the page's script and style sheets
    (borrowed ones first), the header extra before the form, and the body after the bar."""
    page = _page(tmp_path, styles=("/other/other.css",), header='<div id="extra"></div>')
    html = page.render()
    assert "<title>privmesh · demo page</title>" in html
    assert '<p class="tagline">what it shows</p>' in html
    assert html.index("/other/other.css") < html.index("/demo/demo.css")
    assert '<script src="/demo/demo.js" defer></script>' in html
    assert html.index('id="extra"') < html.index('id="key-form"') < html.index("</header>")
    assert html.index("</header>") < html.index('id="demo-body"') < html.index("</body>")
    assert 'placeholder="paste a governance key"' in html and "$" not in html


def test_the_page_and_its_assets_are_served_under_the_same_origin_headers(
    tmp_path: Path,
) -> None:
    """Page, script and style sheet answer 200 with their media type and the CSP."""
    app = FastAPI()
    app.include_router(page_router(_page(tmp_path), "demo"))
    client = TestClient(app)
    for path, kind in [
        ("/demo", "text/html"),
        ("/demo/demo.js", "text/javascript"),
        ("/demo/demo.css", "text/css"),
    ]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(kind), path
        assert "default-src 'none'" in response.headers["content-security-policy"], path
        assert response.headers["x-content-type-options"] == "nosniff", path
    assert client.get("/demo/other.js").status_code == 404


def test_a_missing_body_fails_when_the_routes_are_made(tmp_path: Path) -> None:
    """A page without its body file is refused at start, not on the first visit."""
    with pytest.raises(FileNotFoundError):
        page_router(Page(name="absent", folder=tmp_path, title="t", tagline="t"), "x")


@pytest.mark.parametrize("name", ["", "Demo", "../etc", "a/b", "a.b"])
def test_a_page_name_is_one_lower_case_path_segment(tmp_path: Path, name: str) -> None:
    """A name that is not a lower-case identifier (so not one clean segment) is refused."""
    with pytest.raises(ValueError, match="lower-case identifier"):
        Page(name=name, folder=tmp_path, title="t", tagline="t")
