"""What the engine returns: RequestOutput holding one CompletionOutput per sample (vLLM shapes)."""
from dataclasses import dataclass, field


@dataclass(slots=True)
class CompletionOutput:
    """One generated sequence. finish_reason is None while running, else 'stop'|'length'|'abort'.

    stop_reason is the stop string or stop token id that ended it (None for EOS or length).
    logprobs, when asked for, has one {token_id: logprob} dict per generated token.
    """
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    logprobs: list[dict[int, float]] | None = None
    cumulative_logprob: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    num_cached_tokens: int = 0


@dataclass(slots=True)
class RequestOutput:
    """A request's state after a step: all n outputs, with text and ids so far."""
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    # with SamplingParams.prompt_logprobs: per prompt token {token id: logprob} (the token's
    # and the top k), None for the first token, which nothing predicts (vLLM's shape)
    prompt_logprobs: list[dict[int, float] | None] | None = None

    @property
    def num_cached_tokens(self) -> int:
        return self.metrics.num_cached_tokens


def pack_outputs(outputs: list[RequestOutput]) -> list[tuple]:
    """Outputs as plain tuples, for the pipe from the engine core to its frontend: pickle
    writes those ~30x faster than dataclass instances (64 streamed outputs: ~450 us a step).
    The prompts stay behind: the frontend sent them and puts them back (a streamed request's
    prompt ids, sent with every step, were half of what remained)."""
    return [(o.request_id,
             [(c.index, c.text, c.token_ids, c.finish_reason, c.stop_reason, c.logprobs,
               c.cumulative_logprob) for c in o.outputs],
             o.finished, (o.metrics.arrival_time, o.metrics.first_scheduled_time,
                          o.metrics.first_token_time, o.metrics.finished_time,
                          o.metrics.num_cached_tokens), o.prompt_logprobs)
            for o in outputs]


def unpack_outputs(packed: list[tuple]) -> list[RequestOutput]:
    """The inverse of pack_outputs, with prompt and prompt_token_ids None."""
    return [RequestOutput(rid, None, None, [CompletionOutput(*c) for c in outs], finished,
                          RequestMetrics(*m), prompt_lps)
            for rid, outs, finished, m, prompt_lps in packed]
