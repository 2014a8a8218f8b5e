"""The engine on the Triton backend (interpreted on CPU) decodes what it does on torch."""
import pytest

from pagedserve import LLM, SamplingParams, kernels

# a prompt longer than the step budget (chunked prefill), one sharing its first full block
# (a prefix-cache hit), a short one decoding alongside the others' prefills
PROMPTS = [[1] + list(range(40, 70)), [1] + list(range(40, 55)) + [9, 8], [1, 300, 301]]


def greedy(path: str, backend: str, device) -> list[list[int]]:
    llm = LLM(path, device=str(device), dtype="float32", kernel_backend=backend,
              block_size=16, max_model_len=64, max_num_batched_tokens=24, max_num_seqs=4,
              num_kv_blocks=16)
    assert kernels.active_backend() == backend
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_triton_backend_matches_torch_greedy(tiny_model, kit, triton_ops, monkeypatch, arch):
    prefill_calls = []

    def spy(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale, *window):
        q_lens = (query_start_loc[1:] - query_start_loc[:-1]).tolist()
        prefill_calls.append(list(zip(q_lens, seq_lens.tolist())))
        return real(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale, *window)
    real = triton_ops.paged_prefill_attention
    monkeypatch.setattr(triton_ops, "paged_prefill_attention", spy)
    path = tiny_model(arch)
    try:
        on_triton = greedy(path, "triton", kit.device)
    finally:
        kernels.select_backend("cpu", "torch")
    assert on_triton == greedy(path, "torch", kit.device)
    assert all(len(ids) == 4 for ids in on_triton)
    # the batches did exercise new tokens attending to context already in the cache
    seen = [pair for call in prefill_calls for pair in call]
    assert any(1 < q_len < seq_len for q_len, seq_len in seen)
