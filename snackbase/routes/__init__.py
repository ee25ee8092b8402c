"""One module per resource; each exports `routes`, a table of (method, path, handler).

Paths are relative to the API prefix; method "WS" marks a WebSocket endpoint. Route modules never
import each other: shared behaviour lives in the modules below them (records, auth, rules, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

RouteTable = list[tuple[str, str, Callable[..., Any]]]
