"""Tiny random-weight models of the families beyond Llama, made from transformers configs.

Windows of 16 tokens make most test prompts longer than the window; two layers of which one
is local and one global where a family alternates them.
"""
import os
import shutil

from tests.conftest import STORIES

WINDOW = 16
ROUTER_SCALE = 8.0
_COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.5,
               bos_token_id=1, eos_token_id=2, pad_token_id=None)
# name -> (transformers config class, model class, config overrides)
FAMILIES = {
    "mistral-sliding": ("MistralConfig", "MistralForCausalLM", {"sliding_window": WINDOW}),
    # the window only from layer 1 on (max_window_layers), as Qwen2 configs enable it
    "qwen2-sliding": ("Qwen2Config", "Qwen2ForCausalLM",
                      {"use_sliding_window": True, "sliding_window": WINDOW,
                       "max_window_layers": 1}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 64,
                 "sliding_window": None}),
    # layer 1 keeps a dense MLP (mlp_only_layers); raw top-k weights (norm_topk_prob False)
    "qwen2-moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                   "shared_expert_intermediate_size": 64, "norm_topk_prob": False,
                   "mlp_only_layers": [1]}),
    "qwen3-moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                   "norm_topk_prob": True, "head_dim": 16}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               {"head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 24,
                "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                "tie_word_embeddings": True, "pad_token_id": 0}),
    # layer 0 local (base 10k), layer 1 global (base 1M, linear scaling x4)
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               {"head_dim": 16, "sliding_window": WINDOW, "sliding_window_pattern": 2,
                "query_pre_attn_scalar": 16, "tie_word_embeddings": True, "pad_token_id": 0,
                "rope_parameters": {
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                    "full_attention": {"rope_type": "linear", "factor": 4.0,
                                       "rope_theta": 1000000.0}}}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"sliding_window": WINDOW}),
}


def build_family_model(path: str, family: str, **overrides) -> str:
    """Write a random-weight HF model folder (config, safetensors, the stories tokenizer)."""
    import torch
    import transformers
    cfg_name, model_name, extra = FAMILIES[family]
    config = getattr(transformers, cfg_name)(**{**_COMMON, **extra, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # decisive routers: no near-tied experts for rounding to flip
        for name, param in model.named_parameters():
            if name.endswith(".gate.weight"):
                param.mul_(ROUTER_SCALE)
    model.save_pretrained(path, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(STORIES, name), path)
    return path
