"""Bounds a public endpoint needs, so one request cannot take the server's memory or time.

Prompt and completion length are bounded by the engine's --max-model-len (checked in
generation.check_length); the rest lives here, each behind a `pagedserve serve` flag.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI reads Limits' defaults; it must not import FastAPI to do so
    from pagedserve.server.protocol import SamplingFields


@dataclass(slots=True)
class Limits:
    """Per-request bounds; a request beyond one gets 400 (413 for the body) naming it."""
    max_request_body_bytes: int = 16 * 2**20
    max_n: int = 128            # sequences per request: n x the number of prompts
    max_logprobs: int = 20      # as vLLM's --max-logprobs
    max_stop_strings: int = 16  # entries of `stop`, and of `stop_token_ids`
    max_stop_length: int = 256  # characters per stop string


def _over(value: int, limit: int, what: str, flag: str, param: str) -> None:
    from pagedserve.server.errors import invalid
    if value > limit:
        raise invalid(f"{what} is {value}, above this server's limit of {limit} ({flag})", param)


def check_request(limits: Limits, body: SamplingFields, num_prompts: int,
                  logprobs: int | None, logprobs_field: str) -> None:
    """400 naming the field and the limit when the request asks for more than allowed."""
    n = body.n if isinstance(body.n, int) else 1
    if num_prompts > 1:
        _over(n * num_prompts, limits.max_n, f"n x prompts ({n} x {num_prompts})", "--max-n", "n")
    else:
        _over(n, limits.max_n, "n", "--max-n", "n")
    if logprobs is not None:
        _over(logprobs, limits.max_logprobs, logprobs_field, "--max-logprobs", logprobs_field)
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    _over(len(stops), limits.max_stop_strings, "the number of stop strings",
          "--max-stop-strings", "stop")
    longest = max((len(s) for s in stops), default=0)
    _over(longest, limits.max_stop_length, "the longest stop string's length",
          "--max-stop-length", "stop")
    _over(len(body.stop_token_ids or []), limits.max_stop_strings,
          "the number of stop_token_ids", "--max-stop-strings", "stop_token_ids")


class BodyLimit:
    """ASGI middleware: reads a request body up to the limit before the app sees it, then
    replays it. Beyond the limit (by Content-Length or by counting) it answers 413 at once."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await self._refuse(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(scope, receive, send)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send) -> None:
        from pagedserve.server.errors import error_response
        response = error_response(
            413, f"the request body is larger than this server's limit of {self.limit} bytes "
                 "(--max-request-body-bytes)", code="request_too_large",
            headers={"Connection": "close"})
        await response(scope, receive, send)
