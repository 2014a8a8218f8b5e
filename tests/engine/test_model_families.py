"""Every family beyond Llama gives transformers' greedy tokens: mixed-length prompts (most
longer than the 16-token sliding window), with ample KV, under preemption, with chunked
prefill and with prefix caching; MoE models and Phi-3 also at tensor_parallel_size=2."""
import json
import os

import pytest

from pagedserve import LLM, SamplingParams
from pagedserve.engine.config import EngineConfig
from tests.engine.families import FAMILIES, WINDOW, build_family_model

MOE = ["mixtral", "qwen2-moe", "qwen3-moe"]
# MoE shards every expert's intermediate dimension; Phi-3 splits fused checkpoint tensors
TENSOR_PARALLEL = MOE + ["phi3"]


@pytest.fixture(scope="module")
def family_model(tmp_path_factory):
    cache: dict[str, str] = {}

    def make(family: str) -> str:
        if family not in cache:
            cache[family] = build_family_model(str(tmp_path_factory.mktemp(family)), family)
        return cache[family]
    return make


def greedy(llm: LLM, prompts, max_tokens) -> list[list[int]]:
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in max_tokens]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def assert_no_blocks_held(llm: LLM) -> None:
    bm = llm.llm_engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batch_with_ample_blocks(family, family_model, hf_greedy, mixed_prompts):
    path = family_model(family)
    prompts, max_tokens = mixed_prompts
    assert max(map(len, prompts)) > 4 * WINDOW
    llm = LLM(path, max_num_seqs=16)
    assert greedy(llm, prompts, max_tokens) == hf_greedy(path, prompts, max_tokens)
    assert_no_blocks_held(llm)


# the MoE runs are the slowest here, and paging does not touch their routing
@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in MOE else f
                                    for f in FAMILIES])
def test_preemption_chunked_prefill_and_prefix_caching(family, family_model, hf_greedy,
                                                       mixed_prompts):
    """One engine that must do all three: a pool too small for the batch, a 16-token step
    budget, and prompts sharing a 50-token prefix (three full blocks)."""
    path = family_model(family)
    prompts, max_tokens = mixed_prompts
    shared = prompts[3][:50]
    prompts = prompts + [shared + [7], shared + [8, 9, 10]]
    max_tokens = max_tokens + [6, 9]
    llm = LLM(path, num_kv_blocks=9, max_model_len=128, max_num_batched_tokens=16,
              max_num_seqs=4)
    assert greedy(llm, prompts, max_tokens) == hf_greedy(path, prompts, max_tokens)
    assert llm.llm_engine.scheduler.num_preemptions > 0
    assert llm.llm_engine.block_manager.prefix_hits >= 48
    assert_no_blocks_held(llm)


@pytest.mark.parametrize("family", TENSOR_PARALLEL)
def test_tensor_parallel_equals_one_rank(family, family_model, mixed_prompts):
    path = family_model(family)
    prompts, max_tokens = mixed_prompts
    engine = dict(max_num_batched_tokens=32, max_num_seqs=4, block_size=8, max_model_len=128)
    expected = greedy(LLM(path, **engine), prompts, max_tokens)
    llm = LLM(path, tensor_parallel_size=2, **engine)
    try:
        assert greedy(llm, prompts, max_tokens) == expected
    finally:
        llm.llm_engine.shutdown()


def test_sliding_window_does_not_cap_the_context(family_model):
    """Mistral v0.1's 4096-token window once capped max_model_len; now the model's limit
    (max_position_embeddings) is, and a window-sized cap would refuse this engine."""
    config = EngineConfig(family_model("mistral-sliding"), max_model_len=512)
    assert config.model_config.sliding_window == WINDOW
    assert config.max_model_len == 512


def _rewrite(path: str, tmp_path, **changes) -> str:
    with open(os.path.join(path, "config.json")) as f:
        d = json.load(f)
    d.update(changes)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(d, f)
    return str(tmp_path / "config.json")


def test_transformers_4_config_forms(family_model, tmp_path):
    """4.x files: Qwen3-MoE's num_experts, Gemma 3's rope_local_base_freq + rope_scaling +
    sliding_window_pattern with no layer_types, Gemma 2 with no layer_types."""
    from pagedserve.engine.config import ModelConfig
    d4 = dict(num_experts=8, num_local_experts=None)
    c = ModelConfig.from_json(_rewrite(family_model("qwen3-moe"), tmp_path, **d4))
    assert (c.moe.num_experts, c.moe.top_k, c.moe.renormalize) == (8, 2, True)
    gemma3 = dict(rope_parameters=None, rope_theta=1e6, rope_local_base_freq=1e4,
                  rope_scaling={"rope_type": "linear", "factor": 8.0}, layer_types=None,
                  sliding_window_pattern=6, num_hidden_layers=7)
    c = ModelConfig.from_json(_rewrite(family_model("gemma3"), tmp_path, **gemma3))
    assert c.layer_types == ["sliding_attention"] * 5 + ["full_attention", "sliding_attention"]
    assert (c.rope_theta, c.rope_scaling["factor"]) == (1e6, 8.0)
    assert (c.local_rope_theta, c.local_rope_scaling) == (1e4, None)
    c = ModelConfig.from_json(_rewrite(family_model("gemma2"), tmp_path, layer_types=None,
                                       num_hidden_layers=3))
    assert c.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert (c.attn_logit_softcapping, c.final_logit_softcapping) == (50.0, 30.0)
