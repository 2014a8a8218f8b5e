"""The serving benchmark's HTTP client: POSTs whose answer streams server-sent events, over
asyncio protocols parsed by httptools (the server's own dependency).

On a small host the client shares the CPUs with the server it measures, so what it spends
per streamed chunk is taken from the server. aiohttp (vLLM's benchmark client) wakes a task
and reads two lines per event: in a 256-request stories260K run at 64 streams on 2 cores it
used ~2.0 s of CPU, a third of the second CPU. Here an event is handled inside the socket's
read callback, with no future or task per chunk: ~0.8 s for the same run.
"""
import asyncio
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

# on_event(data) for each event's data; True stops reading (the connection is then closed)
OnEvent = Callable[[bytes], bool]


class StaleConnection(ConnectionError):
    """A kept-alive connection closed before any byte of the answer came (llama-server closes
    idle ones): nothing was generated, so the request may be sent again."""


class _Response:
    def __init__(self, on_event: OnEvent) -> None:
        self.on_event, self.status, self.body, self.buf = on_event, 0, [], b""
        self.started = self.stopped = False
        self.done = asyncio.get_running_loop().create_future()

    def end(self, error: Exception | None = None) -> None:
        """The answer is over (read, given up on, or failed): post() returns or raises."""
        if self.done.done():
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: _Response | None = None
        self.parser: httptools.HttpResponseParser | None = None  # one per answer, in post()
        self.closed = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            return  # bytes nobody asked for: the server closes, or the pool drops us
        self.response.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ConnectionError(f"bad HTTP response: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        r = self.response
        if r is not None and not r.done.done():
            self._fail(StaleConnection("closed before the answer") if not r.started
                       else ConnectionError(f"closed mid-answer: {exc or 'EOF'}"))

    # httptools callbacks
    def on_status(self, _: bytes) -> None:
        self.response.status = self.parser.get_status_code()

    def on_body(self, data: bytes) -> None:
        r = self.response
        if r.status != 200:
            r.body.append(data)
        elif not r.stopped:
            self._events(r, data)

    def on_message_complete(self) -> None:
        r = self.response
        if not self.parser.should_keep_alive():
            self.close()
        r.end()

    def _events(self, r: _Response, data: bytes) -> None:
        buf = r.buf + data
        if b"\r" in buf:  # CRLF line ends (a CR may end one read and its LF start the next)
            buf = buf.replace(b"\r\n", b"\n")
        *events, r.buf = buf.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data:") and r.on_event(line[5:].lstrip(b" ")):
                    r.stopped = True  # the caller is done: the answer is not read further
                    self.close()
                    r.end()
                    return

    def _fail(self, e: Exception) -> None:
        self.response.end(e)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def post(self, head: bytes, body: bytes, on_event: OnEvent) -> tuple[int, bytes]:
        self.response = r = _Response(on_event)
        self.parser = httptools.HttpResponseParser(self)
        self.transport.write(head + body)
        try:
            await r.done
        finally:
            self.response = None
        return r.status, b"".join(r.body)


class SSEClient:
    """Kept-alive connections to one server; `post` sends a JSON body and hands each event's
    data of a 200 answer to on_event. Use as `async with SSEClient(url) as client`."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base URL must be http(s)://host[:port], got {base_url!r}")
        self.host, self.prefix = url.hostname, url.path.rstrip("/")
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if url.scheme == "https" else None
        netloc = self.host if url.port is None else f"{self.host}:{url.port}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._headers = (f"Host: {netloc}\r\nContent-Type: application/json\r\n"
                         f"Accept: text/event-stream\r\n{extra}").encode()
        self._idle: list[_Connection] = []

    async def __aenter__(self) -> "SSEClient":
        return self

    async def __aexit__(self, *_) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port,
                                               ssl=self.ssl)
        return conn

    async def post(self, path: str, body: bytes, on_event: OnEvent,
                   fresh: bool = False) -> tuple[int, bytes]:
        """(status, body of a non-200 answer). A kept-alive connection found closed raises
        StaleConnection; `fresh` opens a new one instead of taking an idle one."""
        conn = None
        while not fresh and self._idle and conn is None:
            c = self._idle.pop()
            conn = None if c.closed else c
        conn = conn or await self._connect()
        head = (f"POST {self.prefix}{path} HTTP/1.1\r\n".encode() + self._headers
                + f"Content-Length: {len(body)}\r\n\r\n".encode())
        try:
            result = await conn.post(head, body, on_event)
        except BaseException:
            conn.close()
            raise
        if not conn.closed:
            self._idle.append(conn)
        return result
