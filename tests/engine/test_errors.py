"""Bad input fails early with a ValueError that names the problem."""
import json
import os
import shutil

import pytest

from pagedserve import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(stories_path):
    return LLM(stories_path, max_model_len=64)


def test_prompt_longer_than_max_model_len_names_both_numbers(llm):
    with pytest.raises(ValueError) as e:
        llm.generate({"prompt_token_ids": [5] * 80}, use_tqdm=False)
    assert "80" in str(e.value) and "64" in str(e.value)


@pytest.mark.parametrize("prompt", ["", {"prompt_token_ids": []}, []])
def test_empty_prompt(llm, prompt):
    with pytest.raises(ValueError, match="empty"):
        llm.generate([prompt] if prompt == [] else prompt, use_tqdm=False)


def test_token_id_outside_vocab(llm):
    with pytest.raises(ValueError, match="9999"):
        llm.generate({"prompt_token_ids": [1, 9999]}, use_tqdm=False)


def test_bad_request_leaves_engine_clean(llm):
    with pytest.raises(ValueError):
        llm.generate(["Once upon a time", ""], use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()
    out = llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=3),
                       use_tqdm=False)
    assert out[0].outputs[0].finish_reason == "length"


def test_output_capped_by_max_model_len(llm):
    out = llm.generate({"prompt_token_ids": [1] + [300] * 59},
                       SamplingParams(temperature=0, max_tokens=50, ignore_eos=True),
                       use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4 and out[0].outputs[0].finish_reason == "length"


def test_unknown_architecture_names_itself_and_the_supported(tmp_path, stories_path):
    shutil.copytree(stories_path, tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as e:
        LLM(str(tmp_path / "m"))
    assert "GPTNeoXForCausalLM" in str(e.value) and "LlamaForCausalLM" in str(e.value)


def test_missing_model_path_says_so(tmp_path):
    missing = os.path.join(str(tmp_path), "no-such-model")
    with pytest.raises(ValueError, match="does not exist"):
        LLM(missing)


def test_unknown_hub_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="nobody/nothing-here"):
        LLM("nobody/nothing-here")


@pytest.mark.parametrize("kwargs,word", [
    ({"max_num_seqs": 0}, "max_num_seqs"), ({"block_size": -1}, "block_size"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ({"kv_cache_memory": "lots"}, "kv_cache_memory"), ({"dtype": "int3"}, "dtype"),
    ({"distributed_executor_backend": "ray"}, "ray"), ({"device": "tpu"}, "tpu"),
])
def test_bad_engine_arguments(stories_path, kwargs, word):
    with pytest.raises(ValueError, match=word):
        LLM(stories_path, **kwargs)


def test_pool_smaller_than_context(stories_path):
    with pytest.raises(ValueError, match="max_model_len"):
        LLM(stories_path, num_kv_blocks=2, block_size=16, max_model_len=64)


def test_unknown_keyword_is_a_type_error(stories_path):
    with pytest.raises(TypeError, match="max_batch"):
        LLM(stories_path, max_batch=3)


def test_chat_without_template(llm):
    with pytest.raises(ValueError, match="chat template"):
        llm.chat([{"role": "user", "content": "hi"}])


def test_logprobs_beyond_vocab_is_rejected_before_the_step(llm):
    with pytest.raises(ValueError, match="logprobs"):
        llm.generate("Once upon a time", SamplingParams(logprobs=100000), use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()
