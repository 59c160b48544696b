"""The shared ASGI helpers: bounded body reading (declared, one message, chunked),
error responses, disconnect watching and the body-limit middleware."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from neocloud.asgi import (
    BodyLimit,
    ClientDisconnected,
    Message,
    Receive,
    declared_length,
    read_body,
    send_error,
    send_json,
    watch_disconnect,
)
from neocloud.errors import InvalidRequest, PayloadTooLarge


def _receiver(messages: list[Message]) -> tuple[Receive, list[Message]]:
    """A ``receive`` over ``messages``; the second value lists what was taken."""
    taken: list[Message] = []
    queue = list(messages)

    async def receive() -> Message:
        if not queue:
            await asyncio.Event().wait()  # like a server with nothing more to say
        msg = queue.pop(0)
        taken.append(msg)
        return msg

    return receive, taken


def _chunks(*parts: bytes) -> list[Message]:
    return [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
            for i, p in enumerate(parts)]


class _Sent:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


# ---------------------------------------------------------------------- read_body
def test_one_message_body_is_returned_as_is() -> None:
    receive, _ = _receiver(_chunks(b'{"a":1}'))
    assert asyncio.run(read_body(receive, 100)) == b'{"a":1}'


def test_chunked_body_is_joined_and_empty_chunks_are_skipped() -> None:
    receive, _ = _receiver(_chunks(b"ab", b"", b"cd", b"e"))
    assert asyncio.run(read_body(receive, 5)) == b"abcde"  # exactly the limit is allowed


def test_empty_body() -> None:
    receive, _ = _receiver([{"type": "http.request"}])
    assert asyncio.run(read_body(receive, 0)) == b""


def test_chunked_body_over_the_limit_is_refused_before_the_rest_is_read() -> None:
    receive, taken = _receiver(_chunks(b"x" * 4, b"x" * 4, b"x" * 4, b"x" * 4))
    with pytest.raises(PayloadTooLarge) as exc:
        asyncio.run(read_body(receive, 10))
    assert exc.value.status == 413 and exc.value.param == "body"
    assert "10 bytes" in str(exc.value)
    assert len(taken) == 3  # stopped at the chunk that passed the limit


def test_single_message_over_the_limit_is_refused() -> None:
    receive, _ = _receiver(_chunks(b"x" * 11))
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body(receive, 10))


@pytest.mark.parametrize("before", [0, 1, 2])
def test_disconnect_while_the_body_streams(before: int) -> None:
    parts = _chunks(b"a", b"b", b"c")[:before]
    for p in parts:
        p["more_body"] = True
    receive, _ = _receiver([*parts, {"type": "http.disconnect"}])
    with pytest.raises(ClientDisconnected):
        asyncio.run(read_body(receive, 100))


# ---------------------------------------------------------------------- declared_length
def test_declared_length() -> None:
    assert declared_length([(b"host", b"x")], 10) is None
    assert declared_length([(b"content-length", b"10")], 10) == 10
    with pytest.raises(PayloadTooLarge) as exc:
        declared_length([(b"content-length", b"11")], 10)
    assert "11 bytes" in str(exc.value) and exc.value.param == "body"
    with pytest.raises(InvalidRequest) as bad:
        declared_length([(b"content-length", b"ten")], 10)
    assert bad.value.param == "content-length" and bad.value.status == 400


# ---------------------------------------------------------------------- responses
def test_send_error_is_the_openai_error_object() -> None:
    sent = _Sent()
    err = PayloadTooLarge("request body is larger than 10 bytes", param="body")
    asyncio.run(send_error(sent, err, [(b"retry-after", b"1")]))
    assert sent.status == 413
    headers = dict(sent.messages[0]["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"retry-after"] == b"1"
    assert int(headers[b"content-length"]) == len(sent.body)
    doc = json.loads(sent.body)
    assert doc["error"]["code"] == "payload_too_large" and doc["error"]["param"] == "body"
    assert sent.messages[-1]["more_body"] is False


def test_send_json_sends_the_bytes_given() -> None:
    sent = _Sent()
    asyncio.run(send_json(sent, 201, b'{"ok":true}'))
    assert sent.status == 201 and sent.body == b'{"ok":true}'


# ---------------------------------------------------------------------- disconnects
class _Target:
    def __init__(self) -> None:
        self.calls = 0

    def on_disconnect(self) -> None:
        self.calls += 1


def test_watch_disconnect_skips_other_messages_and_reports_once() -> None:
    receive, taken = _receiver([{"type": "http.request", "body": b""},
                                {"type": "http.disconnect"}])
    target = _Target()
    asyncio.run(watch_disconnect(receive, target))
    assert target.calls == 1 and len(taken) == 2


def test_watch_disconnect_cancelled_with_the_response_reports_nothing() -> None:
    receive, _ = _receiver([])
    target = _Target()

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(watch_disconnect(receive, target))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert target.calls == 0


# ---------------------------------------------------------------------- BodyLimit
class _App:
    """An app that records the body it was handed."""

    def __init__(self) -> None:
        self.body: bytes | None = None
        self.first: Message | None = None

    async def __call__(self, scope: Any, receive: Receive, send: Any) -> None:
        self.first = await receive()
        self.body = self.first.get("body", b"")
        await send_json(send, 200, b"{}")


def _call(limit: int, headers: list[tuple[bytes, bytes]], messages: list[Message]
          ) -> tuple[_App, _Sent]:
    app, sent = _App(), _Sent()
    receive, _ = _receiver(messages)
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    asyncio.run(BodyLimit(app, limit)(scope, receive, sent))
    return app, sent


def test_body_limit_hands_a_chunked_body_on_whole() -> None:
    app, sent = _call(10, [], _chunks(b"abc", b"def"))
    assert sent.status == 200 and app.body == b"abcdef"
    assert app.first is not None and app.first["more_body"] is False


def test_body_limit_refuses_a_chunked_body_over_the_limit_without_calling_the_app() -> None:
    app, sent = _call(5, [], _chunks(b"abc", b"def"))
    assert sent.status == 413 and app.first is None
    assert json.loads(sent.body)["error"]["code"] == "payload_too_large"


def test_body_limit_refuses_a_declared_length_over_the_limit() -> None:
    app, sent = _call(5, [(b"content-length", b"6")], _chunks(b"abcdef"))
    assert sent.status == 413 and app.first is None


def test_body_limit_passes_a_declared_length_within_the_limit_through() -> None:
    app, sent = _call(5, [(b"content-length", b"3")], _chunks(b"abc"))
    assert sent.status == 200 and app.body == b"abc"


def test_body_limit_passes_a_disconnect_on() -> None:
    app, sent = _call(5, [], [{"type": "http.request", "body": b"a", "more_body": True},
                              {"type": "http.disconnect"}])
    assert app.first == {"type": "http.disconnect"}


def test_read_body_checks_the_declared_length_before_reading() -> None:
    receive, taken = _receiver(_chunks(b"x" * 20))
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body(receive, 10, [(b"content-length", b"20")]))
    assert taken == []
    receive, _ = _receiver(_chunks(b"abc"))
    assert asyncio.run(read_body(receive, 10, [(b"content-length", b"3")])) == b"abc"
