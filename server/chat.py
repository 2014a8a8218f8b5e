"""POST /v1/chat/completions: messages through the chat template, then generation."""
import time
import uuid

from fastapi import Request
from fastapi.responses import StreamingResponse

from pagedserve.engine.outputs import CompletionOutput
from pagedserve.engine.tokenizer import apply_chat_template
from pagedserve.server.errors import check_unicode, invalid
from pagedserve.server.limits import check_request
from pagedserve.server.generation import (Chunks, Deltas, check_length, final_outputs,
                                          generate, sampling_params, stream_error, top_logprobs,
                                          until_disconnect)
from pagedserve.server.protocol import (ChatChoice, ChatCompletionRequest,
                                        ChatCompletionResponse, ChatLogprobs, ChatMessage,
                                        ChatResponseMessage, TokenLogprob, TopLogprob, Usage)
from pagedserve.server.state import ServerState


def _content(i: int, message: ChatMessage) -> str:
    if message.content is None or isinstance(message.content, str):
        return check_unicode(message.content or "", f"messages.{i}.content")
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise invalid(f"messages[{i}].content: only text parts are supported, got a "
                          f"{part.type!r} part", f"messages.{i}.content")
        texts.append(check_unicode(part.text, f"messages.{i}.content"))
    return "\n".join(texts)


def render_messages(state: ServerState, messages: list[ChatMessage],
                    add_generation_prompt: bool) -> list[int]:
    """Token ids of the conversation under the model's (or --chat-template's) template."""
    tok = state.engine.tokenizer
    convo = [{"role": m.role, "content": _content(i, m)} for i, m in enumerate(messages)]
    try:
        text = apply_chat_template(tok, convo, state.settings.chat_template, add_generation_prompt)
    except ValueError as e:
        raise invalid(str(e), "messages") from None
    except Exception as e:  # a template that fails on these messages (jinja raises many kinds)
        raise invalid(f"the chat template failed on these messages: {e}", "messages") from None
    return tok.encode(text, add_special_tokens=False)


def _entry(tok, token_id: int, logprob: float) -> dict:
    text = tok.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def _logprobs(tok, out: CompletionOutput, start: int, k: int) -> ChatLogprobs:
    return ChatLogprobs(content=[
        TokenLogprob(**_entry(tok, tid, d[tid]),
                     top_logprobs=[TopLogprob(**_entry(tok, i, v)) for i, v in top_logprobs(d, k)])
        for tid, d in zip(out.token_ids[start:], out.logprobs[start:])])


async def create_chat_completion(state: ServerState, body: ChatCompletionRequest,
                                 request: Request):
    state.engine_or_raise()
    state.check_model(body.model)
    check_request(state.settings.limits, body, 1, body.top_logprobs if body.logprobs else None,
                  "top_logprobs")
    ids = render_messages(state, body.messages, body.add_generation_prompt)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    max_tokens = check_length(state, len(ids), requested, "messages")
    k = body.top_logprobs or 0
    params = sampling_params(body, max_tokens, k if body.logprobs else None)
    state.admit()
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    gen = generate(state, ids, params, rid)
    if body.stream:
        return StreamingResponse(_stream(state, body, len(ids), gen, rid, k),
                                 media_type="text/event-stream")
    final = (await until_disconnect(request, final_outputs([gen])))[0]
    tok = state.engine.tokenizer
    choices = [ChatChoice(index=o.index, message=ChatResponseMessage(content=o.text),
                          logprobs=_logprobs(tok, o, 0, k) if body.logprobs else None,
                          finish_reason=o.finish_reason, stop_reason=o.stop_reason)
               for o in final.outputs]
    completion = sum(len(o.token_ids) for o in final.outputs)
    return ChatCompletionResponse(id=rid, model=state.model_name, choices=choices, usage=Usage(
        prompt_tokens=len(ids), completion_tokens=completion, total_tokens=len(ids) + completion))


def _choice(index: int, delta: dict, lp: ChatLogprobs | None = None,
            finish_reason: str | None = None, stop_reason: str | int | None = None) -> dict:
    """A stream chunk's choice, as ChatStreamChoice would dump it."""
    return {"index": index, "delta": delta, "logprobs": None if lp is None else lp.model_dump(),
            "finish_reason": finish_reason, "stop_reason": stop_reason}


async def _stream(state: ServerState, body: ChatCompletionRequest, num_prompt: int, gen,
                  rid: str, k: int):
    tok = state.engine.tokenizer
    chunk = Chunks(rid, "chat.completion.chunk", int(time.time()), state.model_name)
    yield chunk([_choice(i, {"role": "assistant", "content": ""}) for i in range(body.n)])
    deltas = Deltas()
    try:
        async for out in gen:
            for o in out.outputs:
                step = deltas.next(o.index, o)
                if step is None:
                    continue
                text, start = step
                lp = _logprobs(tok, o, start, k) if body.logprobs else None
                yield chunk([_choice(o.index, {"role": None, "content": text}, lp,
                                     o.finish_reason, o.stop_reason)])
        if body.include_usage:
            done = deltas.num_tokens
            yield chunk([], Usage(prompt_tokens=num_prompt, completion_tokens=done,
                                  total_tokens=num_prompt + done))
    except Exception as e:
        yield stream_error(e)
    yield "data: [DONE]\n\n"
