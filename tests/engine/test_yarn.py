"""YaRN rope scaling (Qwen2.5/Qwen3 long-context configs) against transformers."""
import pytest
import torch

from pagedserve import LLM, SamplingParams
from pagedserve.engine.layers.rotary import rope_attention_factor, rope_inv_freq


def greedy_one(llm: LLM, prompt: list[int], n: int) -> list[int]:
    out = llm.generate({"prompt_token_ids": prompt},
                       SamplingParams(temperature=0, max_tokens=n, ignore_eos=True),
                       use_tqdm=False)
    return out[0].outputs[0].token_ids


@pytest.mark.parametrize("extra", [{}, {"mscale": 0.707, "mscale_all_dim": 1.0},
                                   {"attention_factor": 1.3, "beta_fast": 16, "truncate": False}])
def test_inv_freq_and_attention_factor_equal_transformers(extra):
    from transformers import Qwen2Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
               "rope_theta": 10000.0, **extra}
    config = Qwen2Config(hidden_size=64, num_attention_heads=4, max_position_embeddings=256,
                         rope_parameters=scaling)
    want, want_factor = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    ours = {k: v for k, v in scaling.items() if k != "rope_theta"}
    torch.testing.assert_close(rope_inv_freq(16, 10000.0, ours, 256), want.float())
    assert rope_attention_factor(ours, 256) == pytest.approx(want_factor)


def test_yarn_model_matches_transformers_past_the_original_context(tiny_model, hf_greedy):
    scaling = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
               "original_max_position_embeddings": 64}
    path = tiny_model("qwen2", rope_parameters=scaling)
    prompt = [1] + list(range(200, 300))  # past the original 64 positions, where YaRN acts
    ours = greedy_one(LLM(path), prompt, 10)
    assert ours == hf_greedy(path, [prompt], [10])[0]
    assert ours != greedy_one(LLM(tiny_model("qwen2")), prompt, 10)  # the scaling really acts


def test_yarn_extends_max_model_len_as_vllm_derives_it(tiny_model):
    scaling = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
               "original_max_position_embeddings": 128}
    path = tiny_model("qwen2", rope_parameters=scaling, max_position_embeddings=128)
    llm = LLM(path)
    assert llm.llm_engine.config.max_model_len == 512  # 128 original positions x 4
    assert len(greedy_one(llm, [1] + list(range(10, 400)), 5)) == 5
