"""The serving benchmark's client (benchmarks/sse_client.py, serve._one) against raw HTTP
servers: how a streamed request is counted, however the server splits its answer, and which
failures are retried."""
import asyncio
import json

import pytest

from pagedserve.benchmarks.serve import _one
from pagedserve.benchmarks.sse_client import SSEClient
from pagedserve.benchmarks.workload import BenchRequest


def _sse(*chunks: dict, sep: str = "\n") -> bytes:
    events = [f"data: {json.dumps(c)}" for c in chunks] + ["data: [DONE]"]
    return "".join(e + sep + sep for e in events).encode()


def _text(t: str) -> dict:
    return {"choices": [{"index": 0, "text": t}]}


def _usage(n: int) -> dict:  # the last chunk, with stream_options.include_usage
    return {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n}}


def chunked(body: bytes, piece: int | None = None) -> bytes:
    """A 200 event stream in chunked encoding, `piece` bytes a chunk (None: one chunk)."""
    piece = piece or len(body) or 1
    parts = [body[i:i + piece] for i in range(0, len(body), piece)]
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n")


def sized(status: int, body: bytes, close: bool = False) -> bytes:
    head = f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n"
    return (head + ("connection: close\r\n" if close else "") + "\r\n").encode() + body


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return head + await reader.readexactly(length)


def run(answers: list, requests: int = 1, piece_writes: bool = False):
    """Send `requests` requests in turn to a server answering each with the next item of
    `answers` (bytes; None: close the connection unanswered; ("partial", bytes): write
    them, then close). Returns (results, requests seen, connections accepted)."""
    seen, conns = [], [0]

    async def handle(reader, writer):
        conns[0] += 1
        while (req := await _read_request(reader)) is not None:
            seen.append(req)
            answer = answers[min(len(seen), len(answers)) - 1]
            if answer is None or isinstance(answer, tuple):
                if answer:
                    writer.write(answer[1])
                    await writer.drain()
                writer.close()
                return
            for i in range(0, len(answer), 5 if piece_writes else len(answer)):
                writer.write(answer[i:i + 5] if piece_writes else answer)
                await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, SSEClient(f"http://127.0.0.1:{port}") as client:
            return [await _one(client, b'{"prompt": [1, 2, 3]}', BenchRequest([1, 2, 3], 5))
                    for _ in range(requests)]
    results = asyncio.run(main())
    return results, seen, conns[0]


def one(answer: bytes, **kw):
    return run([answer], **kw)[0][0]


@pytest.mark.parametrize("piece", [None, 1, 7])
@pytest.mark.parametrize("sep", ["\n", "\r\n"])
def test_a_stream_counts_the_same_however_it_is_split(piece, sep):
    body = _sse(_text(""), _text("ab"), _text("c"), _usage(3), sep=sep)
    for res in (one(chunked(body, piece)), one(chunked(body, piece), piece_writes=True)):
        assert res.error is None and res.output_len == 3
        assert len(res.chunk_times) == 2 and res.ttft == res.chunk_times[0] <= res.e2e


def test_tokens_without_text_are_not_an_error():
    res = one(chunked(_sse(*[_text("")] * 5, _usage(5))))  # e.g. half of a UTF-8 character
    assert res.error is None and res.output_len == 5
    assert res.chunk_times == [] and res.ttft == res.e2e


@pytest.mark.parametrize("body", [_sse(_text(""), _usage(0)), _sse(_text("")), _sse()])
def test_a_stream_without_tokens_is_an_error(body):
    assert one(chunked(body)).error == "no tokens streamed"


def test_an_error_event_ends_the_request_with_its_message():
    body = _sse(_text("a"), {"error": {"message": "engine died", "code": 500}}, _text("b"))
    res = one(chunked(body))
    assert res.error == "engine died" and len(res.chunk_times) == 1


def test_a_refused_request_reports_status_and_body_and_is_not_retried():
    results, seen, _ = run([sized(400, b'{"error": "bad"}')])
    assert results[0].error == 'HTTP 400: {"error": "bad"}' and len(seen) == 1


def test_connections_are_kept_alive_unless_the_server_closes_them():
    ok = chunked(_sse(_text("a"), _usage(1)))
    results, seen, conns = run([ok], requests=3)
    assert [r.output_len for r in results] == [1, 1, 1] and conns == 1
    closing = sized(200, _sse(_text("a"), _usage(1)), close=True)
    results, seen, conns = run([closing], requests=2)
    assert [r.output_len for r in results] == [1, 1] and conns == 2


def test_a_stale_connection_is_retried_once():
    ok = chunked(_sse(_text("a"), _usage(1)))
    results, seen, conns = run([ok, None, ok], requests=2)  # the kept-alive one was closed
    assert [r.error for r in results] == [None, None] and len(seen) == 3 and conns == 2
    results, seen, _ = run([None, None])  # a server that keeps dropping requests
    assert results[0].error.startswith("StaleConnection") and len(seen) == 2


def test_a_connection_lost_after_tokens_came_is_a_failure_not_a_retry():
    partial = ("partial", chunked(_sse(_text("a")))[:-20])
    results, seen, _ = run([partial])
    assert results[0].error.startswith("ConnectionError") and len(seen) == 1
    assert len(results[0].chunk_times) == 1


def test_the_base_url_must_be_http():
    with pytest.raises(ValueError, match="base URL"):
        SSEClient("127.0.0.1:8000")
