"""Health probes at the root and the API's self-description at the prefix."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from snackbase import API_VERSION, __version__
from snackbase.errors import ApiError
from snackbase.web import json_response


async def health(request: Request) -> Response:
    return json_response({"status": "ok"})


async def live(request: Request) -> Response:
    return json_response({"status": "ok"})


async def ready(request: Request) -> Response:
    if not request.app.state.db.ping():
        raise ApiError(503, message="The database is not reachable.")
    return json_response({"status": "ok"})


async def api_root(request: Request) -> Response:
    return json_response({"name": "SnackBase", "version": __version__, "api_version": API_VERSION})


# Served at the root, outside the API prefix, so load balancers need no configuration.
root_routes = [
    ("GET", "/health", health),
    ("GET", "/live", live),
    ("GET", "/ready", ready),
]

routes = [
    ("GET", "", api_root),
]
