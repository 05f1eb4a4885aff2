"""The API's own pages (/dashboard, /rate): static HTML, JS and CSS read from the package
(``service/api/static/``, package data), so a fresh install serves them with no build step and
no CDN. One strict Content-Security-Policy for all of them: a page loads only its own script
and style, so text it shows (an answer, a version name) can never run code."""

from __future__ import annotations

from importlib import resources

from fastapi import HTTPException, Response

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def page_response(name: str, allowed: frozenset[str] | None = None, page_url: str = "") -> Response:
    """``static/name`` as a response with the page headers. With ``allowed``, a name outside it
    is a 404 naming the page (the asset routes take the name from the URL)."""
    if allowed is not None and name not in allowed:
        page = page_url.strip("/") or "page"
        raise HTTPException(404, f"no {page} asset {name!r}" + (f"; the page is at {page_url}" if page_url else ""))
    suffix = name[name.rfind(".") :]
    text = resources.files("service.api").joinpath("static", name).read_text(encoding="utf-8")
    return Response(text, media_type=f"{MEDIA_TYPES[suffix]}; charset=utf-8", headers=PAGE_HEADERS)
