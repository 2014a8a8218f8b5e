"""Default sampling parameters from a model's generation_config.json, as vLLM applies them.

`--generation-config auto` (vLLM's default) reads the model folder's file, `vllm` uses vLLM's
own defaults, and a folder path reads that folder's file. A request's own values win; the
file's fields fill in only what a request leaves unset.
"""
import json
import os
from typing import Any

# generation_config.json field -> SamplingParams field
_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
           "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens"}


def _read(source: str, model_path: str) -> dict[str, Any]:
    if source == "vllm":
        return {}
    folder = model_path if source == "auto" else source
    path = os.path.join(folder, "generation_config.json")
    if not os.path.isfile(path):
        if source != "auto":
            raise ValueError(f"generation_config {source!r} has no generation_config.json")
        return {}
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"generation_config: {path} is not valid JSON: {e}") from None


def default_sampling_values(source: str, model_path: str) -> dict[str, Any]:
    """{SamplingParams field: value} for the fields the generation config sets."""
    data = _read(source, model_path)
    return {ours: data[theirs] for theirs, ours in _FIELDS.items()
            if data.get(theirs) is not None}


def generation_eos_token_ids(source: str, model_path: str) -> list[int]:
    """The generation config's eos_token_id (an int or a list), e.g. Llama 3's <|eot_id|>."""
    ids = _read(source, model_path).get("eos_token_id")
    if ids is None:
        return []
    return [ids] if isinstance(ids, int) else [i for i in ids if isinstance(i, int)]
