"""Which declared request fields this server refuses, and the warning for undeclared ones.

One table: a field listed in REFUSED answers 400 naming it whenever the request gives it a
value the check does not accept. Turning a refusal into a feature (structured outputs, tools,
reasoning) is deleting its row here and implementing the field where it is read.
"""
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from pagedserve.server.errors import invalid

logger = logging.getLogger("pagedserve.server")


@dataclass(slots=True, frozen=True)
class Refusal:
    accepts: Callable[[Any], bool]  # the values that are fine (the defaults, a no-op)
    reason: str


def _unset(value: Any) -> bool:
    return value is None


def _is(*allowed: Any) -> Callable[[Any], bool]:
    return lambda value: value is None or value in allowed


_TOOLS = "the legacy functions API is not supported; use tools"
_ENGINE = "this engine has no counterpart for it"

REFUSED: dict[str, Refusal] = {
    # structured outputs and tools are implemented (server/structured_outputs.py, chat.py);
    # guided_* are refused there, naming structured_outputs
    "structural_tag": Refusal(_unset, "structural tags are not supported; use "
                                      "structured_outputs"),
    "functions": Refusal(lambda v: not v, _TOOLS),
    "function_call": Refusal(_is("none"), _TOOLS),
    "reasoning_effort": Refusal(_unset, "reasoning controls are not supported by this server "
                                        "yet"),
    # sampling this engine does not do
    "best_of": Refusal(_is(1), "best_of is not supported (as in vLLM V1); use n"),
    "use_beam_search": Refusal(_is(False), "beam search is not supported"),
    "length_penalty": Refusal(_is(1.0), "length_penalty applies to beam search, which is not "
                                        "supported"),
    "suffix": Refusal(_unset, "suffix (insertion) is not supported"),
    "spaces_between_special_tokens": Refusal(_is(True), "the fast tokenizer always decodes "
                                                        "special tokens without extra spaces"),
    "priority": Refusal(_is(0), "priority scheduling is not enabled (first come, first "
                                "served)"),
    "logits_processors": Refusal(lambda v: not v, "custom logits processors are not supported"),
    "cache_salt": Refusal(_unset, "prefix-cache salting is not supported"),
    "kv_transfer_params": Refusal(_unset, "KV transfer is not supported"),
    "vllm_xargs": Refusal(_unset, _ENGINE),
    "mm_processor_kwargs": Refusal(_unset, "multimodal inputs are not supported"),
    "chat_template": Refusal(_unset, "a chat template from the request is not trusted; start "
                                     "the server with --chat-template"),
    # OpenAI features outside text generation
    "audio": Refusal(_unset, "audio output is not supported"),
    "modalities": Refusal(lambda v: v is None or list(v) == ["text"], "only text output is "
                                                                       "supported"),
    "prediction": Refusal(_unset, "predicted outputs are not supported"),
    "web_search_options": Refusal(_unset, "web search is not supported"),
    "verbosity": Refusal(_unset, "verbosity control is not supported"),
    "service_tier": Refusal(_is("auto", "default"), "this server has one service tier"),
    "store": Refusal(_is(False), "this server does not store completions"),
}


def check_fields(body: BaseModel) -> None:
    """400 for a refused field with a value it does not accept; one warning line naming the
    fields neither OpenAI nor vLLM defines (they are ignored, as vLLM ignores them)."""
    for name in sorted(body.model_fields_set & REFUSED.keys()):
        refusal = REFUSED[name]
        if not refusal.accepts(getattr(body, name)):
            raise invalid(f"{name} is not supported: {refusal.reason}", name)
    stream_options = getattr(body, "stream_options", None)
    if stream_options is not None and not getattr(body, "stream", False):
        raise invalid("stream_options is only allowed when stream is true", "stream_options")
    if getattr(body, "prompt_logprobs", None) is not None and getattr(body, "stream", False):
        raise invalid("prompt_logprobs are not available when stream is true (as in vLLM)",
                      "prompt_logprobs")
    extra = sorted(body.model_extra or {})
    if extra:
        logger.warning("The following fields were present in the request but ignored: %s",
                       extra)
