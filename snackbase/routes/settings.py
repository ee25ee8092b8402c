"""/settings (superadmin only): the settings stored in the database (snackbase/runtime_settings.py).

GET lists every editable setting with its value, default and whether the environment fixes it; PATCH
stores changes (`null` = back to the default) and applies them at once, with one `settings.update`
audit entry in the same transaction; POST /settings/test-email sends a test email with the current
mail settings and reports the SMTP outcome.
"""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from snackbase import audit, audit_views, runtime_settings
from snackbase.auth import require_superadmin
from snackbase.config import ConfigError
from snackbase.errors import ApiError, field_error, validation_error
from snackbase.ids import SYSTEM_ACCOUNT_ID
from snackbase.mail import deliver
from snackbase.times import now_iso
from snackbase.unit_of_work import unit_of_work
from snackbase.users import check_email
from snackbase.web import json_response, read_json, read_struct

_MASK = "********"


def _listing(request: Request) -> dict[str, Any]:
    state = request.app.state
    return {"items": runtime_settings.describe(state.settings, state.fixed_settings)}


async def get_settings(request: Request) -> Response:
    await require_superadmin(request)
    return json_response(_listing(request))


def _parse_changes(body: Any, fixed: frozenset[str]) -> dict[str, Any]:
    """{name: value or None}; a 400 naming each unknown, fixed or mistyped setting."""
    if not isinstance(body, dict) or not body:
        raise ApiError(
            400, "bad_request", 'Send an object of settings to change, e.g. {"registration": "closed"}.'
        )
    problems: dict[str, Any] = {}
    changes: dict[str, Any] = {}
    for name, value in body.items():
        if name not in runtime_settings.EDITABLE:
            problems.update(field_error(name, "unknown_setting", "This setting cannot be changed here."))
        elif name in fixed:
            problems.update(
                field_error(
                    name,
                    "fixed_by_environment",
                    "Set by an environment variable, which wins; change it there.",
                )
            )
        elif value is None:
            changes[name] = None
        else:
            try:
                changes[name] = runtime_settings.coerce(name, value)
            except ValueError as exc:
                problems.update(field_error(name, "invalid", f"The value {exc}."))
    if problems:
        raise validation_error(problems, "Some settings cannot be changed as asked.")
    return changes


def _check(request: Request, values: dict[str, Any]) -> None:
    state = request.app.state
    try:
        runtime_settings.effective(state.base_settings, values, state.fixed_settings)
    except ConfigError as exc:
        message = str(exc)
        names = [n for n in runtime_settings.EDITABLE if n.upper() in message] or ["settings"]
        raise validation_error(field_error(names[0], "invalid", message), message) from None


def _shown(name: str, value: Any) -> Any:
    secret = runtime_settings._FIELDS[name].metadata["secret"]
    return (_MASK if value else "") if secret else value


async def patch_settings(request: Request) -> Response:
    auth = await require_superadmin(request)
    state = request.app.state
    conn = state.db.conn
    changes = _parse_changes(await read_json(request), state.fixed_settings)
    reason = audit_views.reason_from(request)
    with unit_of_work(conn):
        current = runtime_settings.stored(conn)
        values = {**current, **changes}
        values = {k: v for k, v in values.items() if v is not None}
        _check(request, values)
        before_settings = state.settings
        after_settings = runtime_settings.effective(state.base_settings, values, state.fixed_settings)
        diff: dict[str, dict[str, Any]] = {}
        now = now_iso()
        for name, value in changes.items():
            old, new = getattr(before_settings, name), getattr(after_settings, name)
            if value is None:
                conn.execute("DELETE FROM runtime_settings WHERE name = ?", (name,))
            else:
                conn.execute(
                    """
                    INSERT INTO runtime_settings (name, value, updated_at, updated_by) VALUES (?, ?, ?, ?)
                    ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at,
                        updated_by = excluded.updated_by
                """,
                    (name, msgspec.json.encode(value).decode(), now, auth.user_id),
                )
            if old != new or (value is None) != (name not in current):
                diff[name] = {"old": _shown(name, old), "new": _shown(name, new)}
        if diff:
            audit.append(
                conn,
                account_id=SYSTEM_ACCOUNT_ID,
                actor=audit_views.actor_from_auth(auth),
                action="settings.update",
                collection="settings",
                changes=diff,
                reason=reason,
                meta=audit_views.meta_from_request(request),
            )
    runtime_settings.apply(request.app)
    return json_response(_listing(request))


class TestEmailBody(msgspec.Struct, forbid_unknown_fields=True):
    to: Annotated[str, msgspec.Meta(max_length=320)]


async def test_email(request: Request) -> Response:
    """Sends one plain email now (not queued) so the answer says whether the SMTP settings work."""
    await require_superadmin(request)
    settings = request.app.state.settings
    body = await read_struct(request, TestEmailBody)
    to = check_email(body.to, "to")
    if not settings.smtp_host:
        raise ApiError(
            409, "smtp_not_configured", "Set the SMTP host first: without it emails are only logged."
        )
    message = EmailMessage()
    message["Subject"] = "SnackBase test email"
    message["From"] = settings.mail_from
    message["To"] = to
    message["Message-ID"] = make_msgid(domain="snackbase")
    message.set_content("This is a test email from the SnackBase admin console: the mail settings work.\n")
    try:
        await asyncio.to_thread(deliver, settings, message)
    except (OSError, smtplib.SMTPException) as exc:
        detail = str(exc)[:200] or type(exc).__name__
        raise ApiError(422, "smtp_failed", f"The mail server did not accept the email: {detail}") from None
    return json_response({"sent": True, "to": to, "smtp_host": settings.smtp_host})


routes = [
    ("GET", "/settings", get_settings),
    ("PATCH", "/settings", patch_settings),
    ("POST", "/settings/test-email", test_email),
]
