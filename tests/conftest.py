"""Shared fixtures: the bundled model and tiny random-weight models built in temp folders."""
import json
import os
import shutil

import pytest

# first, before any test imports transformers: with the checkout on sys.path, pagedserve makes
# `kernels` Hugging Face's package rather than the checkout's folder (pagedserve/__init__.py)
import pagedserve  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(REPO, "pagedserve", "models", "stories260K")

# Small but not degenerate: a larger init scale makes logits peaked, so greedy choices are
# far from ties and fp32 reorderings between implementations cannot flip them.
_ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
}


def build_tiny_model(path: str, arch: str = "llama", **overrides) -> str:
    """Write a random-weight HF model folder (config, safetensors, the stories tokenizer)."""
    import torch
    import transformers
    cfg_name, model_name, extra = _ARCHS[arch]
    kwargs = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.5,
                  bos_token_id=1, eos_token_id=2, pad_token_id=None)
    kwargs.update(extra)
    kwargs.update(overrides)
    config = getattr(transformers, cfg_name)(**kwargs)
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(STORIES, name), path)
    return path


@pytest.fixture(scope="session")
def stories_path() -> str:
    return STORIES


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(arch="llama", **config_overrides) -> folder; built once per session."""
    cache: dict[str, str] = {}

    def make(arch: str = "llama", **overrides) -> str:
        key = json.dumps([arch, overrides], sort_keys=True)
        if key not in cache:
            cache[key] = build_tiny_model(str(tmp_path_factory.mktemp(arch)), arch, **overrides)
        return cache[key]
    return make
