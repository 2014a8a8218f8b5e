"""Tokenizer loading, prompt normalisation and chat templates."""

from transformers import AutoTokenizer

from pagedserve.engine.config import EngineConfig
from pagedserve.engine.generation_config import generation_eos_token_ids

PromptType = str | dict | list[int]


def load_tokenizer(path: str, trust_remote_code: bool = False):
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ValueError(f"could not load a tokenizer from {path!r}: {e}") from None


def eos_token_ids(config: EngineConfig, tokenizer) -> frozenset[int]:
    """EOS ids from the model config (may be a list, as in Llama 3), the generation config
    (unless --generation-config vllm) and the tokenizer."""
    ids = config.model_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    # generation_config.json may list more (Llama 3 instruct ends turns with <|eot_id|>)
    ids.update(generation_eos_token_ids(config.generation_config, config.model_path))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def tokenize_prompt(tokenizer, prompt: PromptType, vocab_size: int) -> tuple[str | None, list[int]]:
    """A str, a list of token ids, or {"prompt": str} / {"prompt_token_ids": [...]}."""
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            prompt = list(prompt["prompt_token_ids"])
        elif "prompt" in prompt:
            prompt = prompt["prompt"]
        else:
            raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("prompt must not be empty")
        return prompt, tokenizer.encode(prompt)
    if not isinstance(prompt, (list, tuple)) or not all(isinstance(t, int) for t in prompt):
        raise ValueError("prompt must be a string or a list of token ids, "
                         f"got {type(prompt).__name__}")
    if not prompt:
        raise ValueError("prompt must not be empty")
    bad = [t for t in prompt if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return None, list(prompt)


def apply_chat_template(tokenizer, messages: list[dict], chat_template: str | None = None,
                        add_generation_prompt: bool = True, continue_final_message: bool = False,
                        **template_kwargs) -> str:
    """Render messages with the given template or the tokenizer's; ValueError if neither.
    template_kwargs (vLLM's chat_template_kwargs, documents) reach the template."""
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError("this model has no chat template; pass one with --chat-template "
                         "(or chat_template=...) or use the completions API")
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt,
                                         continue_final_message=continue_final_message,
                                         **template_kwargs)
