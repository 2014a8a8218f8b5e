"""--kv-cache-dtype: a bfloat16 cache holds twice the tokens in the same memory and, on a
trained model, decodes the same greedy text as the model-dtype cache."""
import argparse

import pytest
import torch

from pagedserve import LLM, SamplingParams
from pagedserve.engine.arg_utils import add_engine_args, engine_kwargs_from_args
from pagedserve.engine.config import EngineConfig

PROMPTS = ["Once upon a time", "The little dog", "Lily wanted to", "One day, a boy named Tim"]


def _greedy(llm: LLM) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)]


@pytest.mark.parametrize("backend", ["cpu", "torch"])  # compiled C attention, torch reference
def test_bfloat16_cache_doubles_the_pool_and_keeps_greedy_text(stories_path, backend):
    runs = {}
    for kv in ("auto", "bfloat16"):
        llm = LLM(stories_path, kv_cache_dtype=kv, kv_cache_memory="4MiB",
                  kernel_backend=backend)
        layer = llm.llm_engine.executor.runner.attn_layers[0]
        runs[kv] = (_greedy(llm), llm.llm_engine.block_manager.num_blocks, layer.k_cache.dtype)
    (auto_ids, auto_blocks, auto_dtype), (bf_ids, bf_blocks, bf_dtype) = runs.values()
    assert auto_dtype == torch.float32 and bf_dtype == torch.bfloat16
    assert bf_blocks in (2 * auto_blocks, 2 * auto_blocks + 1)  # 4 MiB // half the bytes
    assert bf_ids == auto_ids


def test_an_unsupported_kv_cache_dtype_is_refused_by_name(stories_path):
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of auto, bfloat16, "
                                         "got 'fp8'"):
        EngineConfig(stories_path, kv_cache_dtype="fp8")


def test_the_flag_reaches_the_engine_and_refuses_other_values(capsys):
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    args = parser.parse_args(["--kv-cache-dtype", "bfloat16"])
    assert engine_kwargs_from_args(args)["kv_cache_dtype"] == "bfloat16"
    assert engine_kwargs_from_args(parser.parse_args([]))["kv_cache_dtype"] == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--kv-cache-dtype", "fp8_e4m3"])
    assert "invalid choice: 'fp8_e4m3'" in capsys.readouterr().err
