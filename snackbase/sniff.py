"""A file's MIME type decided from its first bytes, never from what the client claims (pure).

Magic numbers for the common types; text is told apart by its first characters (HTML, SVG, XML) and,
only for harmless text, refined by the file's extension (CSV, JSON, Markdown). Anything else is
application/octet-stream.
"""

from __future__ import annotations

SNIFF_BYTES = 512

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
    (b"OggS", "audio/ogg"),
    (b"fLaC", "audio/flac"),
    (b"ID3", "audio/mpeg"),
    (b"\x1aE\xdf\xa3", "video/webm"),
    (b"\x1f\x8b", "application/gzip"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"BM", "image/bmp"),
)
_ZIP_BY_EXTENSION = {
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "odt": "application/vnd.oasis.opendocument.text",
    "ods": "application/vnd.oasis.opendocument.spreadsheet",
    "epub": "application/epub+zip",
}
_TEXT_BY_EXTENSION = {"csv": "text/csv", "json": "application/json", "md": "text/markdown",
                      "tsv": "text/tab-separated-values"}  # fmt: skip
_FTYP = {b"avif": "image/avif", b"heic": "image/heic", b"qt  ": "video/quicktime"}
_HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<iframe", b"<meta")

# Types a browser may show inline from our origin; everything else is served as an attachment.
INLINE_SAFE = frozenset((
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/x-icon", "image/avif",
    "application/pdf", "text/plain", "text/csv", "application/json", "audio/ogg", "audio/flac",
    "audio/mpeg", "audio/wav", "video/mp4", "video/webm", "video/quicktime",
))  # fmt: skip


def sniff(head: bytes, extension: str) -> str:
    """The MIME type of content starting with `head` (up to SNIFF_BYTES bytes)."""
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"WAVE", b"AVI "):
        return {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}[head[8:12]]
    if head[4:8] == b"ftyp":
        return _FTYP.get(head[8:12], "video/mp4")
    if head.startswith(b"PK\x03\x04"):
        return _ZIP_BY_EXTENSION.get(extension, "application/zip")
    if _is_text(head):
        return _text_type(head, extension)
    return "application/octet-stream"


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the end of the sniffed bytes is still text.
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def _text_type(head: bytes, extension: str) -> str:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith(b"<svg") or (start.startswith(b"<?xml") and b"<svg" in start):
        return "image/svg+xml"
    if any(marker in start for marker in _HTML_MARKERS):
        return "text/html"
    if start.startswith(b"<?xml") or start.startswith(b"<"):
        return "application/xml"
    return _TEXT_BY_EXTENSION.get(extension, "text/plain")


def allowed(mime: str, patterns: list[str]) -> bool:
    """Whether `mime` matches one of `patterns` ("image/png", "image/*"); an empty list allows all."""
    if not patterns:
        return True
    major = mime.split("/", 1)[0]
    return any(p == mime or p == f"{major}/*" for p in patterns)
