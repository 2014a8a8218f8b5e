"""OpenAI request and response shapes (plus vLLM's extra parameters), as pydantic models.

Every field of OpenAI's completions and chat completions APIs and of vLLM's extras is declared
here. Each one either works or is refused with a 400 naming it: the refusals live in one table,
server/request_fields.py. Fields neither API knows are ignored with one warning, as vLLM does.
Value ranges are checked by SamplingParams, so one rule lives in one place.

Sampling fields that a model's generation_config.json may default (temperature, top_p, top_k,
min_p, repetition_penalty, max_tokens) are None when the request does not set them.
"""
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from pagedserve.engine.sampling_params import RequestOutputKind, SamplingParams
from pagedserve.engine.structured_output import StructuredOutputsParams

# vLLM's defaults for the fields a generation_config.json may change
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                     "repetition_penalty": 1.0}


class RequestModel(BaseModel):
    """Request JSON must have the types the schema states: strict, so `true` is no integer and
    "1" no number (lax coercion let booleans through as 1 and 0). Unknown fields are kept in
    model_extra, to be named in a warning."""
    model_config = ConfigDict(strict=True, extra="allow")


class StreamOptions(RequestModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(RequestModel):
    """Fields shared by completions and chat completions."""
    model: str | None = None
    n: int = 1
    best_of: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    prompt_logprobs: int | None = None
    truncate_prompt_tokens: int | None = None
    echo: bool = False
    add_special_tokens: bool = True
    return_token_ids: bool = False
    return_tokens_as_token_ids: bool = False
    request_id: str | None = None
    priority: int = 0
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM beam search and its length penalty (refused: no beam search here)
    use_beam_search: bool = False
    length_penalty: float = 1.0
    # structured outputs (server/structured_outputs.py; guided_* are refused, as removed)
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None
    guided_whitespace_pattern: str | None = None
    structural_tag: str | None = None
    # vLLM engine hooks this server has no counterpart for (refused when set)
    logits_processors: list[Any] | None = None
    cache_salt: str | None = None
    kv_transfer_params: dict[str, Any] | None = None
    vllm_xargs: dict[str, Any] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None

    def logit_bias_ids(self) -> dict[int, float] | None:
        """logit_bias's keys as token ids (JSON object keys are strings)."""
        if self.logit_bias is None:
            return None
        out = {}
        for key, value in self.logit_bias.items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            out[int(key)] = value
        return out

    def sampling_params(self, max_tokens: int, logprobs: int | None,
                        defaults: dict[str, Any]) -> SamplingParams:
        """SamplingParams for this request; unset fields take `defaults` (the model's
        generation config over vLLM's). ValueError names the bad field."""
        picked = {name: getattr(self, name) if getattr(self, name) is not None
                  else defaults.get(name, fallback) for name, fallback in SAMPLING_DEFAULTS.items()}
        return SamplingParams(
            n=self.n, **picked, seed=self.seed, max_tokens=max_tokens,
            min_tokens=self.min_tokens, stop=self.stop, stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, logprobs=logprobs,
            prompt_logprobs=self.wanted_prompt_logprobs,
            skip_special_tokens=self.skip_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            logit_bias=self.logit_bias_ids(), allowed_token_ids=self.allowed_token_ids,
            bad_words=self.bad_words, truncate_prompt_tokens=self.truncate_prompt_tokens,
            structured_outputs=self.constraint(),
            # a stream sends what is new (its chunks need nothing else); a non-streamed answer
            # needs only the last output: the engine sends nothing per step
            output_kind=(RequestOutputKind.DELTA if self.stream
                         else RequestOutputKind.FINAL_ONLY))

    def constraint(self) -> StructuredOutputsParams | None:
        """The request's one output constraint (response_format, structured_outputs, or
        tool_choice required / a named function); APIError 400 naming a bad field."""
        # imported here: structured_outputs -> errors -> this module
        from pagedserve.server.structured_outputs import GUIDED_FIELDS, request_constraint
        return request_constraint({name: getattr(self, name, None) for name in (
            "response_format", "structured_outputs", "tools", "tool_choice",
            "parallel_tool_calls", *GUIDED_FIELDS)})

    @property
    def wanted_prompt_logprobs(self) -> int | None:
        return self.prompt_logprobs

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = Field(None, ge=0)  # bounded by --max-logprobs
    suffix: str | None = None

    @property
    def wanted_prompt_logprobs(self) -> int | None:
        # echo + logprobs: the prompt's tokens come with their logprobs (as OpenAI's legacy API)
        if self.echo and self.logprobs is not None:
            return max(self.logprobs, self.prompt_logprobs or 0)
        return self.prompt_logprobs


class TextPart(RequestModel):
    type: str
    text: str | None = None


class ChatMessage(RequestModel):
    """Any role the chat template accepts; other keys (tool_calls, ...) reach the template."""
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)  # bounded by --max-logprobs
    add_special_tokens: bool = False  # the template writes the special tokens itself
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    documents: list[dict[str, Any]] | None = None
    # OpenAI fields without a counterpart here (see request_fields.py for what is refused)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    include_reasoning: bool = True
    verbosity: str | None = None
    service_tier: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class Logprob(BaseModel):
    """One entry of vLLM's prompt_logprobs: {token id: {logprob, rank, decoded_token}}."""
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None


def _now() -> int:
    return int(time.time())


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] = []


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    # with --reasoning-parser: the thinking, split from content (vLLM's field)
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] = []


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    prompt_token_ids: list[int] | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    @model_serializer(mode="wrap")
    def _only_present_parts(self, handler):
        # a chunk carries thinking or tool calls only when it has them (as the stream sends)
        out = handler(self)
        for key in ("reasoning_content", "tool_calls"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class ChatCompletionChunk(BaseModel):
    """A stream event; with return_token_ids the first one also has prompt_token_ids."""
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatStreamChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "pagedserve"
    root: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(RequestModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None  # prompt: True; messages: False (vLLM's defaults)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int
    token_strs: list[str] | None = None


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
