"""uvicorn's HTTP protocol (httptools) with its one non-ASGI answer in the error envelope.

A request the HTTP parser itself refuses (a malformed `Content-Length`, a broken request line or
header) never reaches the ASGI app: uvicorn answers it with a hard-coded `text/plain` 400. This
subclass answers the same 400 as every other error, `{status, code, message, fields, request_id}`,
with the security headers. It overrides one method of uvicorn's class (`send_400_response`, stable
since uvicorn 0.13); imported only by the CLI, when serving.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from snackbase.errors import ApiError, envelope
from snackbase.ids import random_bytes
from snackbase.middleware import security_headers
from snackbase.web import encode_json


class EnvelopeHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        request_id = random_bytes(12).hex()
        error = ApiError(
            400, "bad_request", "The HTTP request is malformed (request line, headers or length)."
        )
        body = encode_json(envelope(error, request_id))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"x-request-id", request_id.encode()),
            *security_headers(),
        ]
        head = b"HTTP/1.1 400 Bad Request\r\n" + b"".join(
            name + b": " + value + b"\r\n" for name, value in headers
        )
        self.transport.write(head + b"\r\n" + body)
        self.transport.close()
