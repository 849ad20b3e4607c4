"""The web dashboard: one static page (HTML, CSS, JS) that reads the live endpoint.

Served through the shared page shell (``dashboards_api.pages``): public, no data in it,
every data call carrying the caller's key in a header, kept to this origin.
"""

from __future__ import annotations

from pathlib import Path

from dashboards_api.pages import Page, page_router

STATIC = Path(__file__).resolve().parent.parent / "static"

# The connection pill and the time of the last update, beside the key form.
STATUS = """\
    <div class="status" id="status" role="status" aria-live="polite">
      <span class="pill" id="conn" data-state="connecting">
        <span class="dot"></span><span id="conn-text">connecting</span>
      </span>
      <span class="muted">last update <time id="last-update">never</time></span>
    </div>"""

PAGE = Page(
    name="dashboard",
    folder=STATIC,
    title="DP dashboards",
    tagline="Differentially-private releases of the registered query classes",
    key_placeholder="paste your key",
    header=STATUS,
)

router = page_router(PAGE, "dashboard")
