"""Offline token controls (vLLM's SamplingParams fields) and generation-config defaults."""
import json
import shutil

import pytest

from pagedserve import LLM, SamplingParams

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def llm(stories_path):
    return LLM(stories_path, num_kv_blocks=64)


def _ids(llm, params: SamplingParams) -> list[int]:
    return llm.generate([PROMPT], params, use_tqdm=False)[0].outputs[0].token_ids


def test_logit_bias_allowed_and_bad_words(llm):
    tok = llm.get_tokenizer()
    ha = tok.convert_tokens_to_ids("▁ha")
    assert _ids(llm, SamplingParams(temperature=0, max_tokens=4, logit_bias={ha: 100})) == [ha] * 4
    allowed = tok.convert_tokens_to_ids(["▁he", "."])
    got = _ids(llm, SamplingParams(temperature=1, seed=1, max_tokens=10, allowed_token_ids=allowed))
    assert set(got) <= set(allowed)
    text = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=30, bad_words=["Lily"]),
                        use_tqdm=False)[0].outputs[0].text
    assert "Lily" not in text and "named" in text


@pytest.mark.parametrize("field, value", [("logit_bias", {9999: 1.0}),
                                          ("allowed_token_ids", [600]),
                                          ("stop_token_ids", [512])])
def test_token_ids_outside_the_vocabulary_name_the_field(llm, field, value):
    with pytest.raises(ValueError, match=field):
        llm.generate([PROMPT], SamplingParams(**{field: value}), use_tqdm=False)


def test_logit_bias_values_are_clamped_and_checked():
    assert SamplingParams(logit_bias={5: 1e9, 6: -1e9}).logit_bias == {5: 100.0, 6: -100.0}
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={5: "big"})


def test_generation_config_defaults_and_eos(stories_path, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(stories_path, model)
    base = LLM(stories_path, num_kv_blocks=64)
    greedy = _ids(base, SamplingParams(temperature=0, max_tokens=8))
    cfg = {"temperature": 0.0, "top_k": 5, "max_new_tokens": 6,
           "eos_token_id": [2, greedy[3]]}
    (model / "generation_config.json").write_text(json.dumps(cfg))
    llm = LLM(str(model), num_kv_blocks=64)
    defaults = llm.get_default_sampling_params()
    assert (defaults.temperature, defaults.top_k, defaults.max_tokens) == (0.0, 5, 6)
    out = llm.generate([PROMPT], use_tqdm=False)[0].outputs[0]
    assert out.token_ids == greedy[:4] and out.finish_reason == "stop"  # the config's eos
    plain = LLM(str(model), num_kv_blocks=64, generation_config="vllm")
    assert plain.get_default_sampling_params().temperature == 1.0
    assert _ids(plain, SamplingParams(temperature=0, max_tokens=8)) == greedy
