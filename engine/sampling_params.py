"""SamplingParams: how one request is decoded and when it stops (vLLM's names and defaults)."""
import copy
import enum
from dataclasses import dataclass, field

from pagedserve.engine.structured_output.params import StructuredOutputsParams


class RequestOutputKind(enum.Enum):
    """What a request's outputs carry (vLLM's names). CUMULATIVE: everything so far, every
    step. DELTA: only what is new since the last output. FINAL_ONLY: one output, at the end
    (a non-streamed request needs nothing per step)."""
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


def _check(ok: bool, name: str, value, rule: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {rule}, got {value!r}")


@dataclass(slots=True)
class SamplingParams:
    """Sampling and stopping controls; invalid values raise ValueError naming field and value.

    temperature 0 means greedy; top_k 0 or -1 and top_p 1 disable those filters.
    """
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    # token id -> bias added to its logit (clamped to [-100, 100], as OpenAI does)
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None  # only these may be sampled
    bad_words: list[str] | None = None  # never generated (tokenized by the InputProcessor)
    truncate_prompt_tokens: int | None = None  # keep only the prompt's last k tokens
    # output constrained to a JSON schema, regex, choice or grammar (vLLM's field)
    structured_outputs: StructuredOutputsParams | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    stop_strs: list[str] = field(init=False, repr=False)
    # bad_words as token id sequences, set by the InputProcessor (it has the tokenizer)
    bad_words_token_ids: list[list[int]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        _check(isinstance(self.n, int) and self.n >= 1, "n", self.n, "an integer >= 1")
        _check(self.temperature >= 0, "temperature", self.temperature, ">= 0")
        _check(0 < self.top_p <= 1, "top_p", self.top_p, "in (0, 1]")
        _check(isinstance(self.top_k, int) and self.top_k >= -1, "top_k", self.top_k,
               "-1, 0 (disabled) or a positive integer")
        _check(0 <= self.min_p <= 1, "min_p", self.min_p, "in [0, 1]")
        _check(self.max_tokens is None
               or (isinstance(self.max_tokens, int) and self.max_tokens >= 1),
               "max_tokens", self.max_tokens, "an integer >= 1")
        _check(isinstance(self.min_tokens, int) and self.min_tokens >= 0, "min_tokens",
               self.min_tokens, "an integer >= 0")
        _check(self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
               self.min_tokens, f"<= max_tokens ({self.max_tokens})")
        _check(-2 <= self.presence_penalty <= 2, "presence_penalty", self.presence_penalty,
               "in [-2, 2]")
        _check(-2 <= self.frequency_penalty <= 2, "frequency_penalty", self.frequency_penalty,
               "in [-2, 2]")
        _check(self.repetition_penalty > 0, "repetition_penalty", self.repetition_penalty, "> 0")
        _check(self.logprobs is None or (isinstance(self.logprobs, int) and self.logprobs >= 0),
               "logprobs", self.logprobs, "None or an integer >= 0")
        # torch generators take 64-bit seeds (sample i of n uses seed + i)
        _check(self.seed is None or (isinstance(self.seed, int) and -2**63 <= self.seed < 2**63),
               "seed", self.seed, "a 64-bit signed integer")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        _check(all(isinstance(s, str) and s for s in stops), "stop", self.stop, "non-empty strings")
        self.stop_strs = stops
        ids = self.stop_token_ids or []
        _check(all(isinstance(t, int) and t >= 0 for t in ids), "stop_token_ids",
               self.stop_token_ids, "non-negative integers")
        self.stop_token_ids = list(ids)
        self._check_token_controls()
        _check(self.structured_outputs is None
               or isinstance(self.structured_outputs, StructuredOutputsParams),
               "structured_outputs", self.structured_outputs, "None or StructuredOutputsParams")
        _check(isinstance(self.output_kind, RequestOutputKind), "output_kind",
               self.output_kind, "a RequestOutputKind")
        if self.top_k == -1:
            self.top_k = 0

    def _check_token_controls(self) -> None:
        _check(self.prompt_logprobs is None or (isinstance(self.prompt_logprobs, int)
                                                and self.prompt_logprobs >= 0),
               "prompt_logprobs", self.prompt_logprobs, "None or an integer >= 0")
        if self.logit_bias is not None:
            _check(isinstance(self.logit_bias, dict) and all(
                isinstance(k, int) and isinstance(v, (int, float)) and not isinstance(v, bool)
                for k, v in self.logit_bias.items()),
                "logit_bias", self.logit_bias, "a dict of token id -> number")
            self.logit_bias = {k: max(-100.0, min(100.0, float(v)))
                               for k, v in self.logit_bias.items()}
        ids = self.allowed_token_ids
        _check(ids is None or (isinstance(ids, list) and ids and all(
            isinstance(t, int) and t >= 0 for t in ids)),
            "allowed_token_ids", ids, "None or a non-empty list of token ids")
        words = self.bad_words
        _check(words is None or (isinstance(words, list) and all(
            isinstance(w, str) and w for w in words)), "bad_words", words, "non-empty strings")
        k = self.truncate_prompt_tokens
        _check(k is None or (isinstance(k, int) and k >= 1), "truncate_prompt_tokens", k,
               "None or an integer >= 1")

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids the request names must exist (ValueError naming the field)."""
        for name, ids in (("stop_token_ids", self.stop_token_ids),
                          ("allowed_token_ids", self.allowed_token_ids or []),
                          ("logit_bias", list(self.logit_bias or {}))):
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"{name} has token id {bad[0]}, outside the vocabulary "
                                 f"[0, {vocab_size})")
        for name, k in (("logprobs", self.logprobs), ("prompt_logprobs", self.prompt_logprobs)):
            if k is not None and k > vocab_size:
                raise ValueError(f"{name} ({k}) exceeds the vocabulary size ({vocab_size})")

    def with_output_kind(self, kind: RequestOutputKind) -> "SamplingParams":
        """A copy that differs only in output_kind (the caller's object stays as it was)."""
        if kind is self.output_kind:
            return self
        params = copy.copy(self)
        params.output_kind = kind
        return params

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1
