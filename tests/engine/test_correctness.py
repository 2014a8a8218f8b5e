"""Greedy outputs equal transformers', however the engine batches, pages, shares or preempts."""
import pytest

from pagedserve import LLM, SamplingParams


def greedy(llm: LLM, prompts, max_tokens) -> list[list[int]]:
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in max_tokens]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def assert_no_blocks_held(llm: LLM) -> None:
    bm = llm.llm_engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    assert all(b.ref_count == 0 for b in bm.blocks)
    assert not llm.llm_engine.scheduler.running and not llm.llm_engine.scheduler.waiting


def test_stories260k_matches_transformers(stories_path, hf_greedy):
    llm = LLM(stories_path)
    out = llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=40),
                       use_tqdm=False)[0]
    ids = llm.get_tokenizer().encode("Once upon a time")
    assert out.outputs[0].token_ids == hf_greedy(stories_path, [ids], [40])[0]
    assert out.outputs[0].text.startswith(", there was a little girl named Lily.")
    assert out.outputs[0].finish_reason == "length"
    assert_no_blocks_held(llm)


ARCHS = ["llama", "qwen2", "qwen3", "mistral"]


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_with_ample_blocks(arch, tiny_model, hf_greedy, mixed_prompts):
    path = tiny_model(arch)
    prompts, max_tokens = mixed_prompts
    llm = LLM(path, max_num_seqs=16)
    assert greedy(llm, prompts, max_tokens) == hf_greedy(path, prompts, max_tokens)
    assert llm.llm_engine.scheduler.num_preemptions == 0
    assert_no_blocks_held(llm)


@pytest.mark.parametrize("arch", ARCHS)
def test_preemption_under_a_small_pool(arch, tiny_model, hf_greedy, mixed_prompts):
    path = tiny_model(arch)
    prompts, max_tokens = mixed_prompts
    llm = LLM(path, num_kv_blocks=8, max_model_len=128, enable_prefix_caching=False)
    assert greedy(llm, prompts, max_tokens) == hf_greedy(path, prompts, max_tokens)
    assert llm.llm_engine.scheduler.num_preemptions > 0
    assert_no_blocks_held(llm)


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_caching_shares_blocks(arch, tiny_model, assert_matches_hf, mixed_prompts):
    # near-tie aware: on qwen3 the tail [8, 9] meets a 2e-6 logit gap, which sums in another
    # order (a prefill of the tail alone, another GEMM library) may break either way
    path = tiny_model(arch)
    shared = mixed_prompts[0][3][:50]  # a 50-token prefix: three full blocks of 16
    prompts = [shared + tail for tail in ([7], [8, 9], [10, 11, 12], [300] * 20, [])]
    max_tokens = [6, 9, 4, 8, 5]
    llm = LLM(path, block_size=16, max_num_seqs=2)  # later prompts arrive after earlier ones
    assert_matches_hf(path, prompts, max_tokens, greedy(llm, prompts, max_tokens))
    bm = llm.llm_engine.block_manager
    assert bm.prefix_hits >= 3 * 16 * 3, (bm.prefix_hits, bm.prefix_queries)
    assert_no_blocks_held(llm)
    # the same prompts again are served from blocks freed but still cached
    hits = bm.prefix_hits
    assert_matches_hf(path, prompts[:1], [3], greedy(llm, prompts[:1], [3]))
    assert bm.prefix_hits == hits + 48


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_under_a_small_token_budget(arch, tiny_model, hf_greedy, mixed_prompts):
    path = tiny_model(arch)
    prompts, max_tokens = mixed_prompts
    llm = LLM(path, max_num_batched_tokens=16)
    steps = []
    schedule = llm.llm_engine.scheduler.schedule

    def recording_schedule():
        out = schedule()
        steps.append([(r.num_tokens - r.num_computed_tokens, n)
                      for r, n in zip(out.requests, out.num_new_tokens)])
        return out
    llm.llm_engine.scheduler.schedule = recording_schedule
    assert greedy(llm, prompts, max_tokens) == hf_greedy(path, prompts, max_tokens)
    assert all(sum(n for _, n in step) <= 16 for step in steps)
    assert any(n < remaining for step in steps for remaining, n in step), "no prompt was chunked"
    assert_no_blocks_held(llm)
