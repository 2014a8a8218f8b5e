"""GPU-only checks at production shapes: every head size, half precision, long contexts.

Skipped without a CUDA/ROCm GPU (CI has none). On a GPU the other tests in this folder run
the compiled kernels too, since their tensors then live on the GPU.
"""
import pytest
import torch

from pagedserve.kernels import reference

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU")]
HALF = [torch.float16, torch.bfloat16]


def _qsl(q_lens: list[int], device) -> torch.Tensor:
    qsl = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    qsl[1:] = torch.tensor(q_lens).cumsum(0)
    return qsl.to(device)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("head", [64, 80, 96, 128, 256])
@pytest.mark.parametrize("page", [16, 32])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_decode_all_head_sizes(kit, triton_ops, dtype, head, page, group):
    seq_lens = [1, page, page + 1, 1000, 4099]
    c = kit.make_paged(seq_lens, page, 32 // group, head, dtype)
    q = torch.randn(len(seq_lens), 32, head, device=kit.device).to(dtype)
    out = triton_ops.paged_attention_decode(q, c.k_cache, c.v_cache, c.block_tables,
                                            c.seq_lens, head ** -0.5)
    ref = reference.paged_attention_decode(q.float(), c.k_cache.float(), c.v_cache.float(),
                                           c.block_tables, c.seq_lens, head ** -0.5)
    kit.check_attention("gpu decode", out, ref)


@pytest.mark.parametrize("dtype", HALF)
def test_decode_32k_context_batch_of_one_is_split(kit, triton_ops, dtype):
    from pagedserve.kernels.triton_decode import choose_splits
    from pagedserve.kernels.triton_utils import sm_count
    assert choose_splits(1, 8, 32768, 64, kit.device) * 8 >= sm_count(kit.device)
    c = kit.make_paged([32768], 16, 8, 128, dtype)
    q = torch.randn(1, 32, 128, device=kit.device).to(dtype)
    out = triton_ops.paged_attention_decode(q, c.k_cache, c.v_cache, c.block_tables,
                                            c.seq_lens, 128 ** -0.5)
    ref = reference.paged_attention_decode(q.float(), c.k_cache.float(), c.v_cache.float(),
                                           c.block_tables, c.seq_lens, 128 ** -0.5)
    kit.check_attention("gpu decode 32k", out, ref)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("head", [64, 80, 96, 128, 256])
@pytest.mark.parametrize("group", [1, 8])
def test_prefill_all_head_sizes(kit, triton_ops, dtype, head, group):
    batch = [(0, 300), (512, 129), (1000, 1), (17, 64)]  # (cached prefix, new tokens)
    c = kit.make_paged([p + n for p, n in batch], 16, 32 // group, head, dtype)
    q_lens = [n for _, n in batch]
    q = torch.randn(sum(q_lens), 32, head, device=kit.device).to(dtype)
    qsl = _qsl(q_lens, kit.device)
    out = triton_ops.paged_prefill_attention(q, c.k_cache, c.v_cache, c.block_tables, qsl,
                                             c.seq_lens, head ** -0.5)
    ref = reference.paged_prefill_attention(q.float(), c.k_cache.float(), c.v_cache.float(),
                                            c.block_tables, qsl, c.seq_lens, head ** -0.5)
    kit.check_attention("gpu prefill", out, ref)


def test_engine_picks_triton_on_gpu_and_matches_torch(tiny_model, triton_ops):
    from pagedserve import LLM, SamplingParams, kernels
    prompts = [{"prompt_token_ids": [1] + list(range(40, 40 + n))} for n in (3, 40, 17)]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    outs = {}
    for backend in (None, "torch"):
        # a small cache: the GPU check runs these tests on several processes at once
        llm = LLM(tiny_model(), device="cuda", dtype="float32", kernel_backend=backend,
                  max_model_len=128, max_num_batched_tokens=32, kv_cache_memory="64MiB")
        outs[backend or kernels.active_backend()] = [
            o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        del llm
    kernels.select_backend("cpu", "torch")
    assert set(outs) == {"triton", "torch"}  # the default on a GPU is Triton
    assert outs["triton"] == outs["torch"]
