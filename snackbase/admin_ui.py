"""The admin UI at /_/: the prebuilt single-page app (Svelte, admin_ui/) served as static files, the
same on both backends (it talks to the API only)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from snackbase.errors import ApiError

UI_PREFIX = "/_/"


def ui_dist_dir() -> Path | None:
    """The prebuilt admin UI: bundled in the package by build.py, or admin_ui/dist in a checkout."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "ui_dist", package_dir.parent / "admin_ui" / "dist"):
        if (candidate / "index.html").is_file():
            return candidate
    return None


async def admin_ui_redirect(request: Request) -> Response:
    return Response(status_code=308, headers={"location": UI_PREFIX})


async def admin_ui(request: Request) -> Response:
    """Serves a file of the admin UI, or its index.html for the single-page app's own routes."""
    dist = ui_dist_dir()
    if dist is None:
        raise ApiError(404, message="The admin UI is not bundled in this build (run `make ui`).")
    relative = request.path_params["path"] or "index.html"
    if len(relative) > 1024 or "\x00" in relative:  # no file has such a name; the OS would refuse it
        raise ApiError(404)
    try:
        target = (dist / relative).resolve()
        found = target.is_relative_to(dist.resolve()) and target.is_file()
    except (OSError, ValueError):  # a path component too long for the file system, say
        found = False
    if not found:
        if "." in relative.rsplit("/", 1)[-1]:  # a missing asset, not an app route
            raise ApiError(404)
        target = dist / "index.html"
    cache = "no-cache" if target.name == "index.html" else "public, max-age=31536000, immutable"
    return FileResponse(target, headers={"cache-control": cache})
