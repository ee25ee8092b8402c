"""Email: plain-text + HTML templates (verification, reset, invitation) and SMTP delivery off the event loop.

Without SNACKBASE_SMTP_HOST there is nowhere to send to. In development and testing the message, link
included, is written to the log: that is how a developer clicks the link without a mail server. In
production the log says only that an email could not be sent, never the link: a token in a log file
is a credential anyone with log access could use.
"""

from __future__ import annotations

import asyncio
import html
import logging
import ssl
from email.message import EmailMessage
from email.utils import make_msgid
from typing import TYPE_CHECKING

import msgspec

from snackbase.config import Settings
from snackbase.errors import ApiError
from snackbase.hooks import HookRegistry, MailEvent, hooks

if TYPE_CHECKING:
    import smtplib

log = logging.getLogger("snackbase.mail")
SMTP_TIMEOUT_S = 15
_background: set[asyncio.Task[None]] = set()


class Template(msgspec.Struct, frozen=True):
    subject: str
    text: str
    action: str


TEMPLATES = {
    "verify_email": Template(
        "Verify your email for {account}",
        "Hello,\n\nconfirm that {email} is your address for {account} by opening this link:\n\n{link}\n\n"
        "The link is valid for {valid}. If you did not sign up, ignore this email.\n",
        "Verify email",
    ),
    "reset_password": Template(
        "Reset your {account} password",
        "Hello,\n\nsomeone (hopefully you) asked to reset the password of {email} for {account}.\n"
        "Open this link to choose a new password:\n\n{link}\n\nThe link is valid for {valid} and works once. "
        "If you did not ask for this, ignore this email; your password stays as it is.\n",
        "Choose a new password",
    ),
    "invitation": Template(
        "You are invited to {account}",
        "Hello,\n\nyou have been invited to join {account} as {email}.\n"
        "Open this link to choose a password and join:\n\n{link}\n\nThe invitation is valid for {valid}.\n",
        "Accept the invitation",
    ),
}

_HTML = """<!doctype html>
<html><body style="font-family: sans-serif; line-height: 1.5">
<p>{paragraphs}</p>
<p><a href="{link}" style="display:inline-block;padding:8px 16px;background:#2563eb;color:#fff;
text-decoration:none;border-radius:4px">{action}</a></p>
<p style="color:#666;font-size:90%">If the button does not work, copy this address: {link}</p>
</body></html>
"""


def render(kind: str, *, to: str, account: str, link: str, valid: str, sender: str) -> EmailMessage:
    template = TEMPLATES[kind]
    values = {"account": account, "email": to, "link": link, "valid": valid}
    text = template.text.format(**values)
    escaped = {key: html.escape(value) for key, value in values.items()}
    body_html = template.text.replace("\n\n{link}\n\n", "\n\n").format(**escaped)
    message = EmailMessage()
    # Header values come from validated data; newlines are stripped anyway so nothing can add headers.
    message["Subject"] = template.subject.format(**values).replace("\n", " ").replace("\r", " ")
    message["From"] = sender
    message["To"] = to
    message["Message-ID"] = make_msgid(domain="snackbase")
    message.set_content(text)
    paragraphs = "</p>\n<p>".join(p.replace("\n", "<br>") for p in body_html.strip().split("\n\n"))
    message.add_alternative(
        _HTML.format(paragraphs=paragraphs, link=escaped["link"], action=template.action), subtype="html"
    )
    return message


def _connect(settings: Settings, context: ssl.SSLContext) -> smtplib.SMTP:
    import smtplib  # here, not at start: a server that sends no email never loads it

    if settings.smtp_tls == "ssl":
        return smtplib.SMTP_SSL(
            settings.smtp_host, settings.smtp_port, timeout=SMTP_TIMEOUT_S, context=context
        )
    return smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=SMTP_TIMEOUT_S)


def deliver(settings: Settings, message: EmailMessage) -> None:
    """Sends over SMTP (blocking; runs in a thread). TLS certificates are verified."""
    context = ssl.create_default_context()
    with _connect(settings, context) as smtp:
        if settings.smtp_tls == "starttls":
            smtp.starttls(context=context)
        if settings.smtp_user:
            smtp.login(settings.smtp_user, settings.smtp_password)
        smtp.send_message(message)


async def _send(settings: Settings, kind: str, message: EmailMessage) -> None:
    try:
        await asyncio.to_thread(deliver, settings, message)
    except OSError as exc:  # smtplib.SMTPException is an OSError too
        log.error("email could not be sent", extra={"event": kind, "error": type(exc).__name__})


def send(settings: Settings, kind: str, message: EmailMessage) -> None:
    """Queues the email and returns at once: a slow mail server must not slow the request (or reveal,
    by timing, whether forgot-password found a user)."""
    if not allowed_by_hooks(settings, kind, message):
        return
    if not settings.smtp_host:
        _log_instead(settings, kind, message)
        return
    task = asyncio.get_running_loop().create_task(_send(settings, kind, message))
    _background.add(task)
    task.add_done_callback(_background.discard)


def allowed_by_hooks(
    settings: Settings, kind: str, message: EmailMessage, registry: HookRegistry = hooks
) -> bool:
    """mail.before_send: hooks may change the message in place, or abort (the email is dropped, logged)."""
    if not registry.has("mail.before_send"):
        return True
    try:
        registry.dispatch_sync(
            "mail.before_send",
            MailEvent(kind=kind, message=message, to=str(message["To"]), settings=settings),
        )
    except ApiError as exc:
        log.warning(
            "email not sent: a mail.before_send hook aborted it", extra={"event": kind, "error": exc.message}
        )
        return False
    return True


def _log_instead(settings: Settings, kind: str, message: EmailMessage) -> None:
    if settings.environment == "production":
        log.warning("email not sent: SNACKBASE_SMTP_HOST is not set", extra={"event": kind})
        return
    body = message.get_body(("plain",))
    text = body.get_content() if body is not None else ""
    log.warning(
        "email (no SMTP configured; development only) to %s: %s\n%s",
        message["To"],
        message["Subject"],
        text,
        extra={"event": kind},
    )


async def drain() -> None:
    """Waits for queued emails (tests and shutdown)."""
    while _background:
        await asyncio.gather(*list(_background), return_exceptions=True)
