"""The engine's per-step token histogram (vLLM's iteration_tokens_total)."""
from pagedserve.engine import EngineConfig, LLMEngine, SamplingParams
from pagedserve.engine.llm_engine import ITERATION_TOKEN_BUCKETS


def test_every_step_is_counted_once_with_the_tokens_it_ran(stories_path):
    engine = LLMEngine(EngineConfig(model=stories_path, num_kv_blocks=64,
                                    max_num_batched_tokens=16))
    prompts = {"a": [1] + list(range(100, 140)), "b": [1, 200, 201]}  # 41 tokens: 3 chunks
    for rid, ids in prompts.items():
        engine.add_request(rid, {"prompt_token_ids": ids},
                           SamplingParams(max_tokens=5, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    stats = engine.stats()
    assert len(stats.iteration_tokens) == len(ITERATION_TOKEN_BUCKETS) + 1
    assert sum(stats.iteration_tokens) == stats.num_steps  # every step ran something
    # each prompt token once, each sampled token but the last once (it is never fed back)
    assert stats.iteration_tokens_sum == 44 + 2 * (5 - 1)
    assert stats.iteration_tokens[ITERATION_TOKEN_BUCKETS.index(8)] >= 1  # both decoding
    assert stats.iteration_tokens[ITERATION_TOKEN_BUCKETS.index(16)] >= 2  # full chunks
