"""POST /v1/completions: one or more prompts, n samples each, streamed or not."""
import time
import uuid

from fastapi import Request
from fastapi.responses import StreamingResponse

from pagedserve.engine.outputs import CompletionOutput
from pagedserve.engine.tokenizer import tokenize_prompt
from pagedserve.server.errors import check_unicode, invalid
from pagedserve.server.limits import check_request
from pagedserve.server.generation import (Chunks, Deltas, check_length, final_outputs,
                                          generate, merge, sampling_params, stream_error,
                                          top_logprobs, until_disconnect)
from pagedserve.server.protocol import (CompletionChoice, CompletionLogprobs, CompletionRequest,
                                        CompletionResponse, Usage)
from pagedserve.server.state import ServerState


def _prompts(state: ServerState, prompt) -> list[tuple[str | None, list[int]]]:
    """(text or None, token ids) per prompt: a string, token ids, or a list of either."""
    single = isinstance(prompt, str) or (prompt and isinstance(prompt[0], int))
    items = [prompt] if single else list(prompt)
    if not items:
        raise invalid("prompt must not be empty", "prompt")
    for p in items:
        if isinstance(p, str):
            check_unicode(p, "prompt")
    engine = state.engine
    vocab = engine.config.model_config.vocab_size
    try:
        return [tokenize_prompt(engine.tokenizer, p, vocab) for p in items]
    except ValueError as e:
        raise invalid(str(e), "prompt") from None


def _logprobs(tok, out: CompletionOutput, start: int, k: int, offset: int) -> CompletionLogprobs:
    """Logprobs of tokens [start:], in the legacy completions shape."""
    lp = CompletionLogprobs()
    for tid, d in zip(out.token_ids[start:], out.logprobs[start:]):
        text = tok.decode([tid])
        lp.tokens.append(text)
        lp.token_logprobs.append(d[tid])
        lp.top_logprobs.append({tok.decode([i]): v for i, v in top_logprobs(d, k)} if k else None)
        lp.text_offset.append(offset)
        offset += len(text)
    return lp


async def create_completion(state: ServerState, body: CompletionRequest, request: Request):
    state.engine_or_raise()
    state.check_model(body.model)
    prompts = _prompts(state, body.prompt)
    check_request(state.settings.limits, body, len(prompts), body.logprobs, "logprobs")
    max_tokens = min(check_length(state, len(ids), body.max_tokens, "prompt")
                     for _, ids in prompts)
    params = sampling_params(body, max_tokens, body.logprobs)
    state.admit()
    rid = f"cmpl-{uuid.uuid4().hex}"
    gens = [generate(state, ids, params, f"{rid}-{i}") for i, (_, ids) in enumerate(prompts)]
    if body.stream:
        return StreamingResponse(_stream(state, body, prompts, gens, rid),
                                 media_type="text/event-stream")
    finals = await until_disconnect(request, final_outputs(gens))
    tok = state.engine.tokenizer
    choices = []
    for i, final in enumerate(finals):
        prefix = _echo(tok, prompts[i]) if body.echo else ""
        for o in final.outputs:
            lp = None if body.logprobs is None else _logprobs(tok, o, 0, body.logprobs, len(prefix))
            choices.append(CompletionChoice(index=i * body.n + o.index, text=prefix + o.text,
                                            logprobs=lp, finish_reason=o.finish_reason,
                                            stop_reason=o.stop_reason))
    return CompletionResponse(id=rid, model=state.model_name, choices=choices,
                              usage=_usage(prompts, sum(len(o.token_ids) for f in finals
                                                        for o in f.outputs)))


def _echo(tok, prompt: tuple[str | None, list[int]]) -> str:
    text, ids = prompt
    return text if text is not None else tok.decode(ids)


def _usage(prompts: list[tuple[str | None, list[int]]], completion_tokens: int) -> Usage:
    prompt_tokens = sum(len(ids) for _, ids in prompts)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


async def _stream(state: ServerState, body: CompletionRequest, prompts, gens, rid: str):
    tok, n = state.engine.tokenizer, body.n
    chunk, deltas = Chunks(rid, "text_completion", int(time.time()), state.model_name), Deltas()
    try:
        async for i, out in merge(gens):
            for o in out.outputs:
                index = i * n + o.index
                first = index not in deltas.text
                step = deltas.next(index, o)
                if step is None:
                    continue
                text, start = step
                lp = None
                if body.logprobs is not None:
                    lp = _logprobs(tok, o, start, body.logprobs, len(o.text) - len(text))
                if first and body.echo:
                    text = _echo(tok, prompts[i]) + text
                yield chunk([{"index": index, "text": text,
                              "logprobs": None if lp is None else lp.model_dump(),
                              "finish_reason": o.finish_reason, "stop_reason": o.stop_reason}])
        if body.include_usage:
            yield chunk([], _usage(prompts, deltas.num_tokens))
    except Exception as e:
        yield stream_error(e)
    yield "data: [DONE]\n\n"
