"""GET /metrics (at the root, beside the health probes): the Prometheus text format, mounted only when
SNACKBASE_METRICS_ENABLED is true; with SNACKBASE_METRICS_TOKEN set, the scraper must send it as a
bearer token."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response

from snackbase.errors import ApiError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def metrics(request: Request) -> Response:
    ops = request.app.state.ops
    token = ops.settings.metrics_token
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ApiError(401, "unauthorized", "GET /metrics needs the metrics bearer token.",
                           headers={"www-authenticate": "Bearer"})  # fmt: skip
    return Response(ops.registry.render(), media_type=CONTENT_TYPE, headers={"content-type": CONTENT_TYPE})


root_routes = [("GET", "/metrics", metrics)]
