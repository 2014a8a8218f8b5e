"""POST /v1/completions: one or more prompts, n samples each, streamed or not."""
import time
from collections import defaultdict
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse

from pagedserve.engine.outputs import CompletionOutput, RequestOutput
from pagedserve.engine.tokenizer import tokenize_prompt
from pagedserve.server.errors import check_unicode, invalid
from pagedserve.server.generation import (
    Chunks,
    EventStream,
    StreamChoice,
    check_length,
    final_outputs,
    generate,
    merge,
    prepare,
    request_id,
    sampling_params,
    stream_error,
    until_disconnect,
)
from pagedserve.server.limits import check_request
from pagedserve.server.logprobs import (
    TextOffsets,
    TokenStrings,
    completion_logprobs,
    prompt_logprobs,
)
from pagedserve.server.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Usage,
)
from pagedserve.server.state import ServerState


@dataclass(slots=True)
class Prompt:
    text: str | None  # as the client sent it, if it sent text
    ids: list[int]


def _prompts(state: ServerState, body: CompletionRequest) -> list[Prompt]:
    """One Prompt per prompt: a string, token ids, or a list of either."""
    prompt = body.prompt
    single = isinstance(prompt, str) or (prompt and isinstance(prompt[0], int))
    items = [prompt] if single else list(prompt)
    if not items:
        raise invalid("prompt must not be empty", "prompt")
    for p in items:
        if isinstance(p, str):
            check_unicode(p, "prompt")
    engine = state.engine
    vocab = engine.config.model_config.vocab_size
    out = []
    for p in items:
        try:
            text, ids = tokenize_prompt(engine.tokenizer, p, vocab)
        except ValueError as e:
            raise invalid(str(e), "prompt") from None
        if text is not None and not body.add_special_tokens:
            ids = engine.tokenizer.encode(text, add_special_tokens=False) or ids
        if body.truncate_prompt_tokens is not None and body.truncate_prompt_tokens >= 1:
            ids, text = ids[-body.truncate_prompt_tokens:], None
        out.append(Prompt(text, ids))
    return out


class _Render:
    """How one request's choices are written: echo, logprobs, token strings, offsets."""

    def __init__(self, state: ServerState, body: CompletionRequest) -> None:
        self.tok = state.engine.tokenizer
        self.body = body
        self.strings = TokenStrings(self.tok, body.return_tokens_as_token_ids)

    def echo(self, prompt: Prompt) -> str:
        if not self.body.echo:
            return ""
        return prompt.text if prompt.text is not None else self.tok.decode(prompt.ids)

    def prompt_part(self, prompt: Prompt, out: RequestOutput) -> CompletionLogprobs:
        """Echo + logprobs: the prompt's tokens with their logprobs (the first is None)."""
        offsets = TextOffsets(self.tok, [], self.body.skip_special_tokens).feed(prompt.ids)
        lps = out.prompt_logprobs or [None] * len(prompt.ids)
        return completion_logprobs(self.strings, prompt.ids, lps, self.body.logprobs, offsets)

    def offsets(self, prompt: Prompt, start: int) -> TextOffsets:
        return TextOffsets(self.tok, prompt.ids, self.body.skip_special_tokens, start)

    def output_part(self, o: CompletionOutput, first: int, offsets: TextOffsets
                    ) -> CompletionLogprobs:
        ids = o.token_ids[first:]
        return completion_logprobs(self.strings, ids, o.logprobs[first:], self.body.logprobs,
                                   offsets.feed(ids))

    def prompt_logprobs(self, prompt: Prompt, out: RequestOutput):
        k = self.body.prompt_logprobs
        return None if k is None else prompt_logprobs(self.strings, prompt.ids,
                                                      out.prompt_logprobs, k)


def _join(a: CompletionLogprobs, b: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(tokens=a.tokens + b.tokens,
                              token_logprobs=a.token_logprobs + b.token_logprobs,
                              top_logprobs=a.top_logprobs + b.top_logprobs,
                              text_offset=a.text_offset + b.text_offset)


async def create_completion(state: ServerState, body: CompletionRequest, request: Request):
    prepare(state, body)
    prompts = _prompts(state, body)
    check_request(state.settings.limits, body, len(prompts), body.logprobs, "logprobs")
    if body.prompt_logprobs is not None:
        check_request(state.settings.limits, body, len(prompts), body.prompt_logprobs,
                      "prompt_logprobs")
    max_tokens = min(check_length(state, len(p.ids), body.max_tokens, "prompt") for p in prompts)
    params = sampling_params(state, body, max_tokens, body.logprobs)
    state.admit()
    rid = request_id(request, body, "cmpl")
    headers = {"X-Request-Id": rid.removeprefix("cmpl-")}
    gens = [generate(state, p.ids, params, f"{rid}-{i}") for i, p in enumerate(prompts)]
    if body.stream:
        return EventStream(_stream(state, body, prompts, gens, rid), headers)
    finals = await until_disconnect(request, final_outputs(gens))
    render = _Render(state, body)
    choices = [_choice(render, prompts[i], final, o, i * body.n + o.index)
               for i, final in enumerate(finals) for o in final.outputs]
    response = CompletionResponse(id=rid, model=state.model_name, choices=choices, usage=_usage(
        prompts, sum(len(o.token_ids) for f in finals for o in f.outputs)))
    return JSONResponse(response.model_dump(mode="json"), headers=headers)


def _choice(render: _Render, prompt: Prompt, final: RequestOutput, o: CompletionOutput,
            index: int) -> CompletionChoice:
    body, prefix = render.body, render.echo(prompt)
    lp = None
    if body.logprobs is not None:
        lp = render.output_part(o, 0, render.offsets(prompt, len(prefix)))
        if body.echo:
            lp = _join(render.prompt_part(prompt, final), lp)
    ids = body.return_token_ids
    return CompletionChoice(index=index, text=prefix + o.text, logprobs=lp,
                            finish_reason=o.finish_reason, stop_reason=o.stop_reason,
                            prompt_logprobs=render.prompt_logprobs(prompt, final),
                            prompt_token_ids=prompt.ids if ids else None,
                            token_ids=list(o.token_ids) if ids else None)


def _usage(prompts: list[Prompt], completion_tokens: int) -> Usage:
    prompt_tokens = sum(len(p.ids) for p in prompts)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


class _StreamChoices:
    """Per streamed choice: what was sent, and where its text offsets stand."""

    def __init__(self, render: _Render, prompts: list[Prompt], n: int) -> None:
        self.render, self.prompts, self.n = render, prompts, n
        self.states: defaultdict[int, StreamChoice] = defaultdict(StreamChoice)
        self.offsets: dict[int, TextOffsets] = {}

    def choice(self, i: int, out: RequestOutput, o: CompletionOutput) -> dict | None:
        """The chunk's choice for the delta `o` of prompt i, or None when none is due."""
        index = i * self.n + o.index
        state = self.states[index]
        first = not state.started
        if not state.add(o):
            return None
        d = state.pop()
        render, prompt, body = self.render, self.prompts[i], self.render.body
        prefix = render.echo(prompt) if first else ""
        # the keys of CompletionChoice, in its order (the bytes its model_dump_json would write)
        choice = {"index": index, "text": prefix + d.text, "logprobs": None,
                  "finish_reason": d.finish_reason, "stop_reason": d.stop_reason,
                  "prompt_logprobs": None, "prompt_token_ids": None, "token_ids": None}
        if body.logprobs is not None:
            if first:
                self.offsets[index] = render.offsets(prompt, len(prefix))
            lp = render.output_part(d, 0, self.offsets[index])
            if first and body.echo:
                lp = _join(render.prompt_part(prompt, out), lp)
            choice["logprobs"] = lp.model_dump()
        self._extras(choice, first, prompt, out, d)
        return choice

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.states.values())

    def _extras(self, choice: dict, first: bool, prompt: Prompt, out: RequestOutput,
                d: CompletionOutput) -> None:
        body = self.render.body
        if first and body.prompt_logprobs is not None:
            lps = self.render.prompt_logprobs(prompt, out)
            choice["prompt_logprobs"] = [None if d is None else {
                str(t): v.model_dump() for t, v in d.items()} for d in lps or []]
        if body.return_token_ids:
            if first:
                choice["prompt_token_ids"] = prompt.ids
            choice["token_ids"] = list(d.token_ids)


async def _stream(state: ServerState, body: CompletionRequest, prompts: list[Prompt], gens,
                  rid: str):
    chunk = Chunks(rid, "text_completion", int(time.time()), state.model_name)
    choices = _StreamChoices(_Render(state, body), prompts, body.n)
    try:
        async for i, out in merge(gens):
            for o in out.outputs:
                choice = choices.choice(i, out, o)
                if choice is None:
                    continue
                # continuous_usage_stats: this choice's prompt and its tokens so far (vLLM's)
                usage = (_usage([prompts[i]], choices.states[choice["index"]].num_tokens)
                         if body.continuous_usage else None)
                yield chunk([choice], usage)
        if body.include_usage:
            yield chunk([], _usage(prompts, choices.num_tokens))
    except Exception as e:
        yield stream_error(e)
    yield "data: [DONE]\n\n"
