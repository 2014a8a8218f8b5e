"""On CPUs the linear layers' weights are repacked for oneDNN once loaded (kernels/onednn.py):
the model must still give transformers' greedy tokens, and the plain copies must be gone."""
import os
import shutil

import pytest
import torch

from pagedserve import LLM, SamplingParams
from pagedserve.engine.layers.linear import LinearBase, RowParallelLinear
from pagedserve.kernels import onednn
from tests.conftest import STORIES


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory) -> str:
    """Two Llama layers 512 wide: every projection is big enough to be packed."""
    import transformers
    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
        rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.1, bos_token_id=1,
        eos_token_id=2)
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("wide-llama"))
    transformers.LlamaForCausalLM(config).eval().save_pretrained(path, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(STORIES, name), path)
    return path


@pytest.mark.skipif(not onednn.AVAILABLE, reason="torch without oneDNN")
def test_packed_projections_give_transformers_greedy_tokens(wide_llama, assert_matches_hf,
                                                            mixed_prompts):
    llm = LLM(wide_llama, max_num_seqs=8, kernel_backend="cpu")
    model = llm.llm_engine.executor.runner.model
    linears = [m for m in model.modules() if isinstance(m, LinearBase)]
    assert len(linears) == 2 * 4 and all(m.weight.is_mkldnn for m in linears)
    prompts, max_tokens = mixed_prompts
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in max_tokens]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert_matches_hf(wide_llama, prompts, max_tokens, [o.outputs[0].token_ids for o in outs])


@pytest.mark.skipif(not onednn.AVAILABLE, reason="torch without oneDNN")
def test_packing_replaces_the_plain_weight():
    import weakref
    layer = RowParallelLinear(1024, 512)
    torch.nn.init.normal_(layer.weight)
    plain, x = weakref.ref(layer.weight.data), torch.randn(3, 1024)
    want = layer(x)
    from pagedserve import kernels
    try:
        kernels.select_backend("cpu", "cpu")
        layer.process_weights_after_loading()
        assert layer.weight.is_mkldnn and not layer.weight.requires_grad
        assert plain() is None  # freed: packing must not keep two copies of the model
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-4)
    finally:
        kernels.select_backend("cpu", "torch")
    # an engine made later in this process with the torch backend rebinds kernels.linear:
    # this layer's packed weight must still compute (the reference unpacks it)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-4)
