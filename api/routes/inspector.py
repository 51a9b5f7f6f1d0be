"""The inspector page at `/`: static HTML, CSS and JavaScript shipped in the package (no build step, nothing
fetched from elsewhere), under a strict Content-Security-Policy. The page holds no data; it calls the /v1 API
with the key its user types, as any client does."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)
FILES = Path(__file__).resolve().parent.parent / "inspector"
MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
ASSET = re.compile(r"[a-z][a-z0-9-]*\.(js|css|svg)")
# Only this origin's own files, no inline script or style, no plugins, never framed; user text is shown as text
# by the page's code (textContent), and this policy is the second line should that ever slip.
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


@router.get("/")
def page() -> FileResponse:
    """The inspector."""
    return FileResponse(FILES / "index.html", media_type=MEDIA[".html"], headers=HEADERS)


@router.get("/inspector/{name}")
def asset(name: str) -> FileResponse:
    """One of the page's scripts, style sheets or its icon, by the plain name of a file the package ships: any other
    name (a path, a NUL, one too long for the file system) is a 404 before the file system is asked."""
    if name not in shipped():
        raise HTTPException(404, "no such inspector file")  # the name is not echoed: it may be anything
    return FileResponse(FILES / name, media_type=MEDIA[Path(name).suffix], headers=HEADERS)


@cache
def shipped() -> frozenset[str]:
    """The names of the assets in the package's inspector folder (read once: the package does not change)."""
    return frozenset(p.name for p in FILES.iterdir() if ASSET.fullmatch(p.name) and p.is_file())
