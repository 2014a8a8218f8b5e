"""Turning a user's prompt and SamplingParams into engine requests, without the model.

The server's frontend process validates and tokenizes with this (only the config and the
tokenizer are needed), and sends the small EngineCoreRequest to the engine core; the core
(or an in-process LLMEngine) turns it into a ParentRequest with its sequences and detokenizers.
"""
import itertools
import time
from dataclasses import dataclass

from pagedserve.engine.config import EngineConfig
from pagedserve.engine.detokenizer import Detokenizer
from pagedserve.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from pagedserve.engine.request import Request
from pagedserve.engine.sampling_params import RequestOutputKind, SamplingParams
from pagedserve.engine.tokenizer import PromptType, eos_token_ids, tokenize_prompt


@dataclass(slots=True)
class EngineCoreRequest:
    """A validated, tokenized request: what crosses from the frontend to the engine core."""
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    max_output_tokens: int
    arrival_time: float


@dataclass(slots=True)
class ParentRequest:
    """A user's request: its prompt and the n sampled sequences generated for it."""
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    children: list[Request]
    detoks: list[Detokenizer]
    arrival_time: float
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    sent_tokens: list[int] | None = None  # DELTA: per child, tokens already output
    sent_text: list[int] | None = None  # DELTA: per child, characters already output

    def output(self) -> RequestOutput:
        """The request's output now: everything so far, or what is new if DELTA."""
        delta = self.output_kind is RequestOutputKind.DELTA
        prompt_lps = self._prompt_logprobs(delta)
        outs = [self._completion(i, req, delta) for i, req in enumerate(self.children)]
        metrics = self._metrics()
        done = all(r.finished for r in self.children)
        if done:
            metrics.finished_time = time.monotonic()
        return RequestOutput(self.request_id, self.prompt, self.prompt_token_ids, outs, done,
                             metrics, prompt_lps)

    def _metrics(self) -> RequestMetrics:
        """The earliest times of any sample; built every step for every streamed request."""
        if len(self.children) == 1:  # the common case, without the scans below
            r = self.children[0]
            return RequestMetrics(self.arrival_time, r.first_scheduled_time, r.first_token_time,
                                  None, r.num_cached_tokens)
        first = [r.first_token_time for r in self.children if r.first_token_time]
        sched = [r.first_scheduled_time for r in self.children if r.first_scheduled_time]
        return RequestMetrics(self.arrival_time, min(sched, default=None),
                              min(first, default=None),
                              num_cached_tokens=max(r.num_cached_tokens for r in self.children))

    def _prompt_logprobs(self, delta: bool) -> list[dict[int, float] | None] | None:
        """Once the prompt is prefilled; a DELTA stream carries them in its first output."""
        lps = self.children[0].prompt_logprobs
        if lps is None or len(lps) < len(self.prompt_token_ids):
            return None
        return None if delta and self.sent_tokens[0] else lps

    def _completion(self, i: int, req: Request, delta: bool) -> CompletionOutput:
        detok = self.detoks[i]
        if req.finished:
            detok.flush()  # held bytes can no longer complete: the final text is the full decode
        text = detok.streamable_text(req.finished)
        cum = req.cumulative_logprob if req.logprobs is not None else None
        if not delta:
            return CompletionOutput(req.index, text, req.output_token_ids, req.finish_reason,
                                    req.stop_reason, req.logprobs, cum)
        # streamable text only grows (held-back text is never taken back), so slicing is safe
        t0, c0 = self.sent_tokens[i], self.sent_text[i]
        self.sent_tokens[i], self.sent_text[i] = req.num_output_tokens, len(text)
        lps = req.logprobs[t0:] if req.logprobs is not None else None
        return CompletionOutput(req.index, text[c0:], req.token_ids[req.num_prompt_tokens + t0:],
                                req.finish_reason, req.stop_reason, lps, cum)


def bad_words_token_ids(tokenizer, words: list[str]) -> list[list[int]]:
    """Each bad word as token ids, alone and after a space (as vLLM bans both spellings)."""
    out: list[list[int]] = []
    for word in words:
        for text in (word, " " + word.lstrip()):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if ids and ids not in out:
                out.append(ids)
    return out


class InputProcessor:
    """Validation and tokenization: bad input raises ValueError before anything is queued."""

    def __init__(self, config: EngineConfig, tokenizer) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids(config, tokenizer)
        self._ids = itertools.count()

    def process(self, request_id: str | None, prompt: PromptType,
                params: SamplingParams | None = None,
                arrival_time: float | None = None) -> EngineCoreRequest:
        params = params or SamplingParams()
        vocab = self.config.model_config.vocab_size
        text, ids = tokenize_prompt(self.tokenizer, prompt, vocab)
        params.check_vocab(vocab)
        if params.prompt_logprobs is not None and (
                self.config.tensor_parallel_size > 1 or self.config.pipeline_parallel_size > 1):
            # the extra logit rows are asked of rank 0 only (see StepInput.logit_counts)
            raise ValueError("prompt_logprobs needs tensor_parallel_size and "
                             "pipeline_parallel_size 1")
        if params.structured_outputs is not None:  # a bad schema is the client's error
            from pagedserve.engine.structured_output.xgrammar_backend import validate
            validate(params.structured_outputs, self.config.structured_outputs_config)
        if params.truncate_prompt_tokens is not None:
            ids = ids[-params.truncate_prompt_tokens:]
        if params.bad_words:
            params.bad_words_token_ids = bad_words_token_ids(self.tokenizer, params.bad_words)
        limit = self.config.max_model_len
        if len(ids) >= limit:
            raise ValueError(f"prompt has {len(ids)} tokens but max_model_len is {limit}; "
                             f"the prompt must be shorter to leave room for output")
        request_id = str(next(self._ids)) if request_id is None else request_id
        room = limit - len(ids)
        arrival = time.monotonic() if arrival_time is None else arrival_time
        return EngineCoreRequest(request_id, text, ids, params,
                                 min(params.max_tokens or room, room), arrival)

    def make_parent(self, req: EngineCoreRequest) -> ParentRequest:
        """The sequences (one per sample) and their detokenizers for a processed request."""
        params, rid, ids = req.params, req.request_id, req.prompt_token_ids
        children = [Request(rid if params.n == 1 else f"{rid}-{i}", rid, i, ids, params,
                            req.max_output_tokens, self.eos_token_ids, req.arrival_time)
                    for i in range(params.n)]
        detoks = [Detokenizer(self.tokenizer, ids, params) for _ in children]
        parent = ParentRequest(rid, req.prompt, ids, children, detoks, req.arrival_time,
                               params.output_kind)
        if parent.output_kind is RequestOutputKind.DELTA:
            parent.sent_tokens, parent.sent_text = [0] * params.n, [0] * params.n
        return parent
