"""POST /v1/chat/completions: messages through the chat template, then generation."""
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from pagedserve.engine.outputs import CompletionOutput, RequestOutput
from pagedserve.engine.tokenizer import apply_chat_template
from pagedserve.server.chat_output import ChatOutputParser, check_tool_choice, tool_mode
from pagedserve.server.errors import check_unicode, invalid
from pagedserve.server.generation import (
    Chunks,
    EventStream,
    StreamChoice,
    check_length,
    final_outputs,
    generate,
    prepare,
    request_id,
    sampling_params,
    stream_error,
    until_disconnect,
)
from pagedserve.server.limits import check_request
from pagedserve.server.logprobs import TokenStrings, chat_logprobs, prompt_logprobs
from pagedserve.server.protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessage,
    ChatResponseMessage,
    Usage,
)
from pagedserve.server.state import ServerState


@dataclass(slots=True)
class TemplateOptions:
    """How the conversation is rendered (vLLM's request fields of the same names)."""
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    documents: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None


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


def _conversation(messages: list[ChatMessage]) -> list[dict]:
    """Messages as the template sees them: any role, text content, and their other keys."""
    convo = []
    for i, m in enumerate(messages):
        entry = {**(m.model_extra or {}), "role": m.role, "content": _content(i, m)}
        if m.name is not None:
            entry["name"] = m.name
        if entry.get("tool_calls"):
            entry["tool_calls"] = _template_tool_calls(entry["tool_calls"])
        convo.append(entry)
    return convo


def _template_tool_calls(calls: list) -> list:
    """Earlier turns' calls as templates expect them: arguments as objects, not JSON text
    (vLLM does the same), so the template writes them once, not as a quoted string."""
    out = []
    for call in calls:
        function = dict(call.get("function") or {}) if isinstance(call, dict) else {}
        if isinstance(function.get("arguments"), str):
            try:
                function["arguments"] = json.loads(function["arguments"])
            except ValueError:
                pass  # left as written; the template decides
        out.append({**call, "function": function} if isinstance(call, dict) else call)
    return out


def render_messages(state: ServerState, messages: list[ChatMessage],
                    options: TemplateOptions) -> list[int]:
    """Token ids of the conversation under the model's (or --chat-template's) template."""
    if options.add_generation_prompt and options.continue_final_message:
        raise invalid("continue_final_message and add_generation_prompt cannot both be true",
                      "continue_final_message")
    if options.continue_final_message and (not messages or messages[-1].role != "assistant"):
        raise invalid("continue_final_message needs the last message to be the assistant's",
                      "continue_final_message")
    tok = state.engine.tokenizer
    kwargs = dict(options.chat_template_kwargs or {})
    if options.documents is not None:
        kwargs["documents"] = options.documents
    if options.tools:
        kwargs["tools"] = options.tools
    convo = _conversation(messages)
    try:
        text = apply_chat_template(tok, convo, state.settings.chat_template,
                                   options.add_generation_prompt,
                                   continue_final_message=options.continue_final_message,
                                   **kwargs)
    except ValueError as e:
        raise invalid(str(e), "messages") from None
    except Exception as e:  # a template that fails on these messages (jinja raises many kinds)
        raise invalid(f"the chat template failed on these messages: {e}", "messages") from None
    return tok.encode(text, add_special_tokens=options.add_special_tokens)


def _options(body: ChatCompletionRequest) -> TemplateOptions:
    return TemplateOptions(body.add_generation_prompt, body.continue_final_message,
                           body.add_special_tokens, body.chat_template_kwargs, body.documents,
                           body.tools)


def _output_parser(state: ServerState, body: ChatCompletionRequest, ids: list[int]):
    """A factory of per-choice output parsers, or None when the text goes out as it is."""
    s, mode = state.settings, tool_mode(body.tools, body.tool_choice)
    try:
        check_tool_choice(mode, s.tool_call_parser, s.enable_auto_tool_choice)
    except ValueError as e:
        raise invalid(str(e), "tool_choice") from None
    if mode == "none" and not s.reasoning_parser:
        return None
    from pagedserve.server.reasoning import get_reasoning_parser
    tok = state.engine.tokenizer
    reasoning = get_reasoning_parser(s.reasoning_parser) if s.reasoning_parser else None
    return lambda: ChatOutputParser(mode, body.tool_choice, s.tool_call_parser,
                                    reasoning(tok) if reasoning else None, tok, ids,
                                    body.parallel_tool_calls is not False)


def _echo(body: ChatCompletionRequest) -> str:
    """echo: the last message's text starts the answer when it is in the answer's role."""
    last = body.messages[-1]
    if not body.echo or (body.add_generation_prompt and last.role != "assistant"):
        return ""
    return _content(len(body.messages) - 1, last)


async def create_chat_completion(state: ServerState, body: ChatCompletionRequest,
                                 request: Request):
    prepare(state, body)
    k = body.top_logprobs or 0
    check_request(state.settings.limits, body, 1, k if body.logprobs else None, "top_logprobs")
    if body.prompt_logprobs is not None:
        check_request(state.settings.limits, body, 1, body.prompt_logprobs, "prompt_logprobs")
    ids = render_messages(state, body.messages, _options(body))
    parsers = _output_parser(state, body, ids)
    requested = (body.max_completion_tokens if body.max_completion_tokens is not None
                 else body.max_tokens)
    max_tokens = check_length(state, len(ids), requested, "messages")
    params = sampling_params(state, body, max_tokens, k if body.logprobs else None)
    if parsers is not None and tool_mode(body.tools, body.tool_choice) == "auto":
        # markers such as Mistral's [TOOL_CALLS] are special tokens the parser must see
        keep = parsers().tools.adjust_skip_special_tokens()
        if keep is not None:
            params.skip_special_tokens = keep
    state.admit()
    rid = request_id(request, body, "chatcmpl")
    headers = {"X-Request-Id": rid.removeprefix("chatcmpl-")}
    gen = generate(state, ids, params, rid)
    if body.stream:
        return EventStream(_stream(state, body, ids, gen, rid, k, parsers), headers)
    final = (await until_disconnect(request, final_outputs([gen])))[0]
    response = _response(state, body, ids, final, rid, k, parsers)
    return JSONResponse(response.model_dump(mode="json"), headers=headers)


def _message(o: CompletionOutput, echo: str, parsers) -> tuple[ChatResponseMessage, str | None]:
    """The choice's message (thinking and tool calls split out when parsers is set)."""
    if parsers is None:
        return ChatResponseMessage(content=echo + o.text), o.finish_reason
    parsed, finish_reason = parsers().whole(o.text, o.finish_reason)
    content = parsed["content"]
    parsed["content"] = echo + content if content is not None else (echo or None)
    return ChatResponseMessage(**parsed), finish_reason


def _response(state: ServerState, body: ChatCompletionRequest, ids: list[int],
              final: RequestOutput, rid: str, k: int, parsers=None) -> ChatCompletionResponse:
    strings = TokenStrings(state.engine.tokenizer, body.return_tokens_as_token_ids)
    echo, want_ids = _echo(body), body.return_token_ids
    choices = []
    for o in final.outputs:
        message, finish_reason = _message(o, echo, parsers)
        choices.append(ChatChoice(
            index=o.index, message=message,
            logprobs=(ChatLogprobs(content=chat_logprobs(strings, o.token_ids, o.logprobs, k))
                      if body.logprobs else None),
            finish_reason=finish_reason, stop_reason=o.stop_reason,
            token_ids=list(o.token_ids) if want_ids else None))
    completion = sum(len(o.token_ids) for o in final.outputs)
    lps = (None if body.prompt_logprobs is None
           else prompt_logprobs(strings, ids, final.prompt_logprobs, body.prompt_logprobs))
    return ChatCompletionResponse(
        id=rid, model=state.model_name, choices=choices, prompt_logprobs=lps,
        prompt_token_ids=ids if want_ids else None,
        usage=Usage(prompt_tokens=len(ids), completion_tokens=completion,
                    total_tokens=len(ids) + completion))


def _choice(index: int, delta: dict, lp: ChatLogprobs | None = None,
            finish_reason: str | None = None, stop_reason: str | int | None = None) -> dict:
    """A stream chunk's choice, as ChatStreamChoice would dump it."""
    return {"index": index, "delta": delta, "logprobs": None if lp is None else lp.model_dump(),
            "finish_reason": finish_reason, "stop_reason": stop_reason, "token_ids": None}


def _usage(num_prompt: int, done: int) -> Usage:
    return Usage(prompt_tokens=num_prompt, completion_tokens=done, total_tokens=num_prompt + done)


def _parsed_delta(parser: ChatOutputParser, text: str, o: CompletionOutput
                  ) -> tuple[dict, str | None]:
    """The parsed delta of a choice whose text so far is `text` (all that is left when it
    finished)."""
    parts = [parser.delta(text)]
    finish_reason = o.finish_reason
    if o.finished:
        last, finish_reason = parser.finish(text, o.finish_reason)
        parts.append(last)
    delta: dict = {"role": None}
    for part in filter(None, parts):
        for key, value in part.to_dict().items():
            delta[key] = delta.get(key, [] if key == "tool_calls" else "") + value
    return delta, finish_reason


class _ChatStream:
    """Per streamed choice: its StreamChoice, and with parsers its text so far (the tool-call
    and reasoning parsers read a choice's whole text; no token or logprob lists are kept)."""

    def __init__(self, body: ChatCompletionRequest, strings: TokenStrings, k: int,
                 parsers) -> None:
        self.body, self.strings, self.k = body, strings, k
        self.states: defaultdict[int, StreamChoice] = defaultdict(StreamChoice)
        self.parsers = {i: parsers() for i in range(body.n)} if parsers is not None else None
        self.texts: defaultdict[int, str] = defaultdict(str)

    def choice(self, o: CompletionOutput) -> dict | None:
        """The chunk's choice for the delta `o`, or None when none is due."""
        state = self.states[o.index]
        if self.parsers is not None and not state.finished:
            self.texts[o.index] += o.text
        if not state.add(o):
            return None
        p, body = state.pending, self.body
        lp = (ChatLogprobs(content=chat_logprobs(self.strings, p.token_ids, p.logprobs, self.k))
              if body.logprobs else None)
        delta, finish_reason = {"role": None, "content": p.text}, p.finish_reason
        if self.parsers is not None:
            delta, finish_reason = _parsed_delta(self.parsers[o.index], self.texts[o.index], p)
            if len(delta) == 1 and not p.finished and lp is None:
                return None  # held back (a marker may be starting): its tokens go out later
        d = state.pop()
        choice = _choice(o.index, delta, lp, finish_reason, d.stop_reason)
        if body.return_token_ids:
            choice["token_ids"] = list(d.token_ids)
        return choice

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.states.values())


async def _stream(state: ServerState, body: ChatCompletionRequest, ids: list[int], gen,
                  rid: str, k: int, parsers=None):
    strings = TokenStrings(state.engine.tokenizer, body.return_tokens_as_token_ids)
    chunk = Chunks(rid, "chat.completion.chunk", int(time.time()), state.model_name)
    echo = _echo(body)
    for i in range(body.n):  # one role chunk per choice, as vLLM sends
        extra = {"prompt_token_ids": ids} if body.return_token_ids and i == 0 else None
        yield chunk([_choice(i, {"role": "assistant", "content": echo})],
                    _usage(len(ids), 0) if body.continuous_usage else None, extra)
    choices = _ChatStream(body, strings, k, parsers)
    try:
        async for out in gen:
            for o in out.outputs:
                choice = choices.choice(o)
                if choice is not None:
                    yield chunk([choice], _usage(len(ids), choices.states[o.index].num_tokens)
                                if body.continuous_usage else None)
        if body.include_usage:
            yield chunk([], _usage(len(ids), choices.num_tokens))
    except Exception as e:
        yield stream_error(e)
    yield "data: [DONE]\n\n"
