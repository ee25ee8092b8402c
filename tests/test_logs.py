"""The JSON access line: written directly (not through `logging`), and on the event loop batched per
turn of the loop, so many finished requests cost one write."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator

import pytest

from snackbase import logs


@pytest.fixture
def access_pipe(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    monkeypatch.setattr(logs, "_access_fd", write_end)
    # Whatever earlier tests did to logging: this logger writes INFO lines (setLevel clears its cache).
    monkeypatch.setattr(logging.root.manager, "disable", 0)
    monkeypatch.setattr(logs.access_logger, "disabled", False)
    level = logs.access_logger.level
    logs.access_logger.setLevel(logging.INFO)
    assert logs.access_logger.isEnabledFor(logging.INFO)
    assert logs._running_loop() is None, logs._running_loop()
    yield read_end
    logs.access_logger.setLevel(level)
    os.close(read_end)
    os.close(write_end)


def drain(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""


def test_outside_a_loop_each_line_is_written_at_once(access_pipe: int) -> None:
    logs.log_access("GET", "/health", 200, 0.5)
    line = json.loads(drain(access_pipe))
    assert (line["message"], line["method"], line["path"], line["status"]) == (
        "request",
        "GET",
        "/health",
        200,
    )


def test_on_the_loop_the_lines_of_one_turn_go_out_in_one_write(access_pipe: int) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        for i in range(3):
            logs.log_access("GET", f"/r/{i}", 200, 0.1)
        before = drain(access_pipe)  # nothing yet: the write waits for the next turn
        await asyncio.sleep(0)
        return before, drain(access_pipe)

    before, after = asyncio.run(scenario())
    assert before == b""
    assert [json.loads(x)["path"] for x in after.splitlines()] == ["/r/0", "/r/1", "/r/2"]


def test_invitation_tokens_are_hidden(access_pipe: int) -> None:
    logs.log_access("GET", "/api/v1/invitations/sbt_secret123", 200, 0.1)
    assert b"sbt_secret123" not in drain(access_pipe)
