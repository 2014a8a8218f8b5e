"""EventStream, the streamed answer: every event is sent in order, and the stream's generator
(whose finally blocks abort the request) is closed however the response ends."""
import asyncio

import pytest

from pagedserve.server.generation import EventStream


class _Events:
    """An event source that records how far it got and whether it was closed."""

    def __init__(self, n: int) -> None:
        self.n, self.sent, self.closed = n, 0, False

    async def __call__(self):
        try:
            for i in range(self.n):
                self.sent = i + 1
                yield f"data: {i}\n\n"
                await asyncio.sleep(0)
        finally:
            self.closed = True


async def _never() -> dict:
    await asyncio.Event().wait()
    return {}


def _run(stream: EventStream, send, receive=_never) -> bool:
    """Run the response; True if its events were closed by the time it returned (not later,
    when asyncio.run finalizes leftover generators)."""
    async def main() -> bool:
        try:
            await stream({"type": "http"}, receive, send)
        finally:
            closed.append(stream.events.ag_frame is None)
        return closed[-1]
    closed: list[bool] = []
    try:
        return asyncio.run(main())
    finally:
        assert closed and closed[-1], "the stream's generator was left open"


def test_all_events_go_out_in_order_then_the_end():
    events, got = _Events(5), []

    async def send(message: dict) -> None:
        got.append(message)
    _run(EventStream(events(), {"X-Request-Id": "r1"}), send)
    start, *body, end = got
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert (b"x-request-id", b"r1") in start["headers"]
    assert [m["body"] for m in body] == [f"data: {i}\n\n".encode() for i in range(5)]
    assert all(m["more_body"] for m in body) and end == {
        "type": "http.response.body", "body": b"", "more_body": False}
    assert events.closed


def test_a_disconnect_closes_the_stream_without_an_error():
    events = _Events(10_000)

    async def send(message: dict) -> None:
        await asyncio.sleep(0)

    async def receive() -> dict:
        while events.sent < 3:
            await asyncio.sleep(0)
        return {"type": "http.disconnect"}
    _run(EventStream(events(), {}), send, receive)
    assert events.closed and 3 <= events.sent < 10_000


def test_a_failed_send_closes_the_stream_and_raises():
    events = _Events(10)

    async def send(message: dict) -> None:
        if message.get("body"):
            raise OSError("connection reset")
    with pytest.raises(OSError, match="connection reset"):
        _run(EventStream(events(), {}), send)
    assert events.closed and events.sent == 1


def test_background_tasks_run_after_the_stream():
    # FastAPI hands an endpoint's BackgroundTasks to the response it returns
    from starlette.background import BackgroundTask
    events, order = _Events(2), []

    async def send(message: dict) -> None:
        order.append("sent")
    stream = EventStream(events(), {})
    stream.background = BackgroundTask(lambda: order.append("background"))
    _run(stream, send)
    assert order == ["sent"] * 4 + ["background"]
