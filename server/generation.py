"""What completions and chat share: prompt checks, running requests, client disconnects, SSE."""
import asyncio
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from pagedserve.engine.async_engine import EngineDeadError
from pagedserve.engine.generation_config import default_sampling_values
from pagedserve.engine.outputs import CompletionOutput, RequestOutput
from pagedserve.engine.sampling_params import SamplingParams
from pagedserve.server.errors import APIError, error_info, from_value_error, invalid
from pagedserve.server.protocol import SamplingFields
from pagedserve.server.request_fields import check_fields
from pagedserve.server.state import ServerState, logger

_DONE = object()
# fields the engine's ValueErrors may start with (SamplingParams.check_vocab and the prompt)
_PARAM_FIELDS = {"stop_token_ids", "allowed_token_ids", "logit_bias", "logprobs",
                 "prompt_logprobs", "prompt", "bad_words"}


def check_length(state: ServerState, num_prompt: int, max_tokens: int | None, what: str) -> int:
    """The completion's max_tokens; 400 with both numbers if prompt + output exceed the context.
    Unset, it is what the context leaves, capped by the generation config's max_new_tokens."""
    limit = state.engine.config.max_model_len
    if max_tokens is None:
        if num_prompt >= limit:
            raise invalid(f"This model's maximum context length is {limit} tokens, but the "
                          f"{what} has {num_prompt} tokens, leaving no room for the completion.",
                          what)
        default = default_sampling(state).get("max_tokens")
        return min(limit - num_prompt, default or limit)
    if max_tokens >= 1 and num_prompt + max_tokens > limit:
        raise invalid(f"This model's maximum context length is {limit} tokens. However, you "
                      f"requested {num_prompt + max_tokens} tokens ({num_prompt} in the {what}, "
                      f"{max_tokens} for the completion). Please reduce the length of the "
                      f"{what} or max_tokens.", "max_tokens")
    return max_tokens


@functools.lru_cache(maxsize=8)
def _defaults(source: str, model_path: str) -> dict[str, Any]:
    return default_sampling_values(source, model_path)


def default_sampling(state: ServerState) -> dict[str, Any]:
    """The model's generation-config defaults (--generation-config), read once."""
    config = state.engine.config
    return _defaults(config.generation_config, config.model_path)


def sampling_params(state: ServerState, body: SamplingFields, max_tokens: int,
                    logprobs: int | None) -> SamplingParams:
    try:
        return body.sampling_params(max_tokens, logprobs, default_sampling(state))
    except ValueError as e:
        raise from_value_error(e, set(type(body).model_fields)) from None


def request_id(request: Request, body: SamplingFields, prefix: str) -> str:
    """vLLM's rule: the X-Request-Id header, else the body's request_id, else a random id."""
    base = request.headers.get("x-request-id") or body.request_id or uuid.uuid4().hex
    return f"{prefix}-{base}"


def prepare(state: ServerState, body: SamplingFields) -> None:
    """What every generation request checks first: the engine, the model, refused fields."""
    state.engine_or_raise()
    state.check_model(body.model)
    check_fields(body)


class _InterToken:
    """Inter-token latency from a request's outputs: the time between outputs shared by the
    tokens they brought (a non-streamed request has one output: its decode time per token).
    Outputs are deltas (or the one final output), so the tokens per sequence add up here."""

    def __init__(self, state: ServerState) -> None:
        self.metrics, self.last, self.tokens = state.metrics, None, 0
        self.per_seq: dict[int, int] = {}  # generated tokens per sequence index

    def observe(self, out: RequestOutput) -> None:
        for o in out.outputs:
            self.per_seq[o.index] = self.per_seq.get(o.index, 0) + len(o.token_ids)
        tokens = sum(self.per_seq.values())
        now = time.monotonic()
        if self.last is None:
            self.last = out.metrics.first_token_time or now
            self.tokens = min(tokens, len(out.outputs))  # the first tokens have no latency
        if tokens > self.tokens:
            self.metrics.inter_token(now - self.last, tokens - self.tokens)
            self.last, self.tokens = now, tokens


async def generate(state: ServerState, prompt_ids: list[int], params: SamplingParams,
                   request_id: str) -> AsyncIterator[RequestOutput]:
    """engine.generate with metrics; leaving early (client gone) aborts and counts an abort."""
    first, finished = True, False
    itl = _InterToken(state)
    try:
        async for out in state.engine.generate({"prompt_token_ids": prompt_ids}, params,
                                               request_id):
            if first:
                state.metrics.first_output(out)
                first = False
            itl.observe(out)
            if out.finished:
                finished = True
                state.metrics.finished(out, params, list(itl.per_seq.values()))
            yield out
    except ValueError as e:  # the engine's own check of the request, before its first step
        if not first:
            raise
        finished = True  # rejected, not aborted
        raise from_value_error(e, _PARAM_FIELDS) from None
    finally:
        if not finished:
            state.metrics.aborted()


async def merge(gens: list[AsyncIterator]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several requests' outputs as they come, tagged with the request's index."""
    if len(gens) == 1:
        async for out in gens[0]:
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, gen: AsyncIterator) -> None:
        try:
            async for out in gen:
                queue.put_nowait((i, out))
        except Exception as e:
            queue.put_nowait((i, e))
        finally:
            queue.put_nowait((i, _DONE))
    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        left = len(tasks)
        while left:
            i, item = await queue.get()
            if item is _DONE:
                left -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:  # cancelling a pump aborts its request
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def final_outputs(gens: list[AsyncIterator]) -> list[RequestOutput]:
    finals: list[RequestOutput | None] = [None] * len(gens)
    async for i, out in merge(gens):
        finals[i] = out
    return finals


async def _client_gone(receive: Receive) -> None:
    # The body is read, so the next ASGI message is the disconnect (or the end of the response).
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(receive: Receive, work: Awaitable) -> asyncio.Task:
    """Run work until it ends or the client disconnects (then it is cancelled, which aborts
    its requests); returns its task, done or cancelled."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_client_gone(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        logger.info("client disconnected; request aborted")
    return task


async def until_disconnect(request: Request, work: Awaitable):
    """Await work; if the client disconnects first, cancel it, which aborts its requests."""
    task = await _unless_gone(request.receive, work)
    if task.cancelled():
        raise APIError(499, "client disconnected")
    return task.result()


class EventStream(Response):
    """A streamed answer (text/event-stream): Starlette's StreamingResponse without its anyio
    task group, whose cancel scopes cost ~3 us of this process's CPU per streamed token. A
    client that disconnects cancels the stream, and the stream's generators abort."""
    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], headers: dict[str, str]) -> None:
        # background: FastAPI reads it, and puts an endpoint's BackgroundTasks there
        self.events, self.status_code, self.background = events, 200, None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = await _unless_gone(receive, self._send_all(send))
        if not task.cancelled():
            task.result()  # a failure to send is the server's error, as for any response
        if self.background is not None:  # after the stream, as StreamingResponse runs them
            await self.background()

    async def _send_all(self, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            async for event in self.events:
                # one turn of the event loop first: every stream an engine step woke builds
                # its chunk, then the writes go out back to back, and the client, woken once,
                # finds many ready (-10 % of this loop's CPU per token, -5 % of the client's)
                await asyncio.sleep(0)
                await send({"type": "http.response.body", "body": event.encode(),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:  # now, not when garbage collection finds it: closing it aborts the request
            await self.events.aclose()


def _compact_encoder() -> Callable[[Any], str]:
    """json.dumps in pydantic's compact form, for chunks sent once per token.
    JSONEncoder.encode builds its C encoder again on every call (about as long as encoding a
    chunk's choice); this one is built once. Pure-Python json (no _json) keeps the plain form."""
    base = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    make = json.encoder.c_make_encoder
    if make is None:
        return base.encode
    strings = json.encoder.encode_basestring
    # JSONEncoder.iterencode's own arguments: no circular check, no indent, NaN allowed
    c_encode = make(None, base.default, strings, None, ":", ",", False, False, True)

    def encode(o: Any) -> str:
        return strings(o) if isinstance(o, str) else "".join(c_encode(o, 0))
    return encode


_encode = _compact_encoder()


class Chunks:
    """The SSE events of one stream. Chunks are built from dicts, and the fields every chunk
    repeats are encoded once: a pydantic model per token was the streamed path's largest cost
    in this process after the HTTP machinery. The bytes are those model_dump_json wrote."""

    def __init__(self, request_id: str, obj: str, created: int, model: str) -> None:
        self.head = (f'data: {{"id":{_encode(request_id)},"object":"{obj}","created":{created},'
                     f'"model":{_encode(model)},"choices":')

    def __call__(self, choices: list[dict], usage: BaseModel | None = None,
                 extra: dict | None = None) -> str:
        tail = "null" if usage is None else usage.model_dump_json()
        more = "".join(f",{_encode(k)}:{_encode(v)}" for k, v in (extra or {}).items())
        return f'{self.head}{_encode(choices)},"usage":{tail}{more}}}\n\n'


def sse(chunk: BaseModel | dict | str) -> str:
    if isinstance(chunk, BaseModel):
        chunk = chunk.model_dump_json()
    elif isinstance(chunk, dict):
        chunk = json.dumps(chunk)
    return f"data: {chunk}\n\n"


def stream_error(e: Exception) -> str:
    """An error in the middle of a stream: one error event (the status is already sent)."""
    if isinstance(e, APIError):
        return sse(error_info(e.status, e.message, e.param, e.code))
    logger.error("stream failed: %r", e)
    code = "engine_dead" if isinstance(e, EngineDeadError) else None
    return sse(error_info(500, str(e) or type(e).__name__, code=code))


@dataclass(slots=True)
class StreamChoice:
    """One streamed choice: the DELTA outputs it got that are not sent yet, and what was sent.
    A delta can bring tokens but no text (held back: it may start a stop string); its tokens
    and logprobs wait here for the next chunk, so a stream adds up to the whole answer."""
    pending: CompletionOutput | None = None
    num_tokens: int = 0  # tokens sent so far: usage stats count these
    started: bool = False  # a first chunk was sent (it goes out even without text)
    finished: bool = False

    def add(self, o: CompletionOutput) -> bool:
        """Take the next delta; True when a chunk is due (new text, the end, or the start)."""
        if self.finished:
            return False  # a finished choice's end repeats in its request's later outputs
        p = self.pending
        if p is None:
            p = self.pending = CompletionOutput(o.index, logprobs=None if o.logprobs is None
                                                else [])
        p.text += o.text
        p.token_ids += o.token_ids
        if o.logprobs is not None:
            p.logprobs += o.logprobs
        p.finish_reason, p.stop_reason = o.finish_reason, o.stop_reason
        p.cumulative_logprob = o.cumulative_logprob
        return bool(p.text) or p.finished or not self.started

    def pop(self) -> CompletionOutput:
        """What the chunk being sent carries: everything since the last chunk."""
        out, self.pending = self.pending, None
        self.started, self.finished = True, out.finished
        self.num_tokens += len(out.token_ids)
        return out
