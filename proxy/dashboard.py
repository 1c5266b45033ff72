"""GET /dashboard: the live dashboard, one self-contained HTML page (inline script and style, no CDN).

The page is served without auth because it carries no data: it is static markup and script. Every
figure it shows comes from /stats, which stays behind the bearer token; the page asks for the token
and sends it in the Authorization header (a browser cannot attach one when it navigates to a page).
"""

from __future__ import annotations

from importlib.resources import files

from aiohttp import web

PAGE = files("llamafleet.proxy").joinpath("dashboard.html").read_text(encoding="utf-8")

# The browser may run the page's own inline code and talk to this proxy only: nothing is fetched
# from anywhere else, and the page cannot be framed by another site.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; img-src data:; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


async def handle_dashboard(request: web.Request) -> web.StreamResponse:
    return web.Response(text=PAGE, content_type="text/html", charset="utf-8", headers=HEADERS)
