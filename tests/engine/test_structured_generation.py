"""Structured outputs through the engine (offline LLM on the bundled model): every output
validates / matches / is a choice, alongside unconstrained requests in the same batches, with
n > 1, seeds, preemption and recompute; finish reasons and logprobs as vLLM gives them."""
import json
import re

import jsonschema
import pytest

from pagedserve import LLM
from pagedserve.sampling_params import SamplingParams, StructuredOutputsParams

SCHEMA = {"type": "object",
          "properties": {"hero": {"type": "string", "pattern": "^[A-Z][a-z]{2,8}$"},
                         "age": {"type": "integer", "minimum": 1, "maximum": 99},
                         "kind": {"enum": ["girl", "boy", "dog"]}},
          "required": ["hero", "age", "kind"], "additionalProperties": False}
PROMPTS = ["Once upon a time", "Lily and Tom went to the park", "The little dog"]


@pytest.fixture(scope="module")
def llm():
    return LLM(structured_outputs_config={"disable_any_whitespace": True}, max_num_seqs=16)


def sp(**kw) -> SamplingParams:
    return SamplingParams(max_tokens=kw.pop("max_tokens", 120), **kw)


def test_json_regex_choice_mixed_with_free_text(llm):
    regex = r"[A-Z][a-z]+ (is|was) [0-9]{1,2}"
    choices = ["happy", "sad", "sleepy"]
    params = [sp(temperature=0.8, seed=1, structured_outputs=StructuredOutputsParams(json=SCHEMA)),
              sp(temperature=0, max_tokens=20),
              sp(temperature=1.0, seed=2, structured_outputs=StructuredOutputsParams(regex=regex)),
              sp(temperature=0.7, structured_outputs=StructuredOutputsParams(choice=choices))]
    prompts = [PROMPTS[i % 3] for i in range(4)]
    outs = llm.generate(prompts, params, use_tqdm=False)
    jsonschema.validate(json.loads(outs[0].outputs[0].text), SCHEMA)
    assert outs[1].outputs[0].finish_reason == "length"  # unconstrained, unchanged by the others
    assert outs[1].outputs[0].text == llm.generate(prompts[1], params[1])[0].outputs[0].text
    assert re.fullmatch(regex, outs[2].outputs[0].text)
    assert outs[3].outputs[0].text in choices
    assert all(o.outputs[0].finish_reason == "stop" for o in (outs[0], outs[2], outs[3]))


def test_n_samples_and_seeds(llm):
    params = sp(n=3, temperature=1.0, seed=7,
                structured_outputs=StructuredOutputsParams(json=SCHEMA))
    first = llm.generate(PROMPTS[0], params, use_tqdm=False)[0].outputs
    again = llm.generate(PROMPTS[0], params, use_tqdm=False)[0].outputs
    assert [c.text for c in first] == [c.text for c in again]  # seeded: reproducible
    for c in first:
        jsonschema.validate(json.loads(c.text), SCHEMA)
    assert len({c.text for c in first}) > 1  # sample i uses seed + i


def test_max_tokens_first_gives_length(llm):
    out = llm.generate(PROMPTS[0], sp(max_tokens=3, temperature=0,
                                      structured_outputs=StructuredOutputsParams(json=SCHEMA)))
    assert out[0].outputs[0].finish_reason == "length" and out[0].outputs[0].text.startswith("{")


def test_finished_grammar_stops_even_with_ignore_eos(llm):
    yes_no = StructuredOutputsParams(choice=["yes", "no"])
    out = llm.generate(PROMPTS[1], sp(temperature=0, ignore_eos=True, structured_outputs=yes_no))
    assert out[0].outputs[0].text in ("yes", "no") and out[0].outputs[0].finish_reason == "stop"


def test_logprobs_are_of_the_constrained_distribution(llm):
    """vLLM applies the bitmask before the sampler, so logprobs are of what could be sampled:
    every top token that may be sampled continues the choice (the rest are -inf), and the
    stop token after it has probability 1."""
    dragon = StructuredOutputsParams(choice=["dragon"])
    out = llm.generate(PROMPTS[0], sp(temperature=0, logprobs=3, structured_outputs=dragon))
    c, tok = out[0].outputs[0], llm.get_tokenizer()
    assert c.text == "dragon" and c.token_ids[-1] == tok.eos_token_id
    done = ""
    for token, lps in zip(c.token_ids[:-1], c.logprobs):
        for top in (t for t, lp in lps.items() if lp > float("-inf")):
            assert "dragon"[len(done):].startswith(tok.decode([top]).lstrip())
        done = tok.decode(c.token_ids[:c.token_ids.index(token) + 1]).lstrip()
    assert c.logprobs[-1][tok.eos_token_id] == pytest.approx(0.0, abs=1e-5)


def test_invalid_constraints_are_refused_before_queueing(llm):
    for bad, needle in ((StructuredOutputsParams(json={"type": "nope"}), "json"),
                        (StructuredOutputsParams(regex="(unclosed"), "regex"),
                        (StructuredOutputsParams(grammar="root ::= missing"), "grammar")):
        with pytest.raises(ValueError, match=f"invalid structured_outputs {needle}"):
            llm.generate(PROMPTS[0], sp(structured_outputs=bad))
    assert not llm.llm_engine.has_unfinished_requests()


def test_preemption_and_recompute_keep_outputs_valid():
    """A KV pool too small for all at once: requests are preempted and recomputed; their
    matchers keep their place (recompute never resamples a token)."""
    llm = LLM(structured_outputs_config={"disable_any_whitespace": True}, num_kv_blocks=24,
              block_size=16, max_model_len=128, max_num_seqs=8)
    params = [sp(temperature=1.0, seed=i, max_tokens=90,
                 structured_outputs=StructuredOutputsParams(json=SCHEMA)) for i in range(8)]
    outs = llm.generate([PROMPTS[i % 3] * 3 for i in range(8)], params, use_tqdm=False)
    assert llm.llm_engine.scheduler.num_preemptions > 0
    for o in outs:
        assert o.outputs[0].finish_reason == "stop"
        jsonschema.validate(json.loads(o.outputs[0].text), SCHEMA)


def test_unknown_config_field_is_named():
    with pytest.raises(ValueError, match="'disable_whitespace'"):
        LLM(structured_outputs_config={"disable_whitespace": True})


def test_sixteen_concurrent_mixed_requests_through_the_core_process(stories_path):
    """The server's path: the engine core in its own process, constrained and free requests
    interleaved in its batches."""
    import asyncio

    from pagedserve.engine.async_engine import AsyncLLMEngine
    from pagedserve.engine.config import EngineConfig
    regex = r"(red|blue) [a-z]{2,6}"

    def params(i: int) -> SamplingParams:
        so = [StructuredOutputsParams(json=SCHEMA), StructuredOutputsParams(regex=regex),
              StructuredOutputsParams(choice=["up", "down"]), None][i % 4]
        return sp(temperature=1.0, seed=i, max_tokens=60, structured_outputs=so)

    async def main():
        eng = AsyncLLMEngine.from_config(EngineConfig(
            model=stories_path, structured_outputs_config={"disable_any_whitespace": True}))
        try:
            async def one(i):
                return [o async for o in eng.generate(PROMPTS[i % 3], params(i))][-1]
            return await asyncio.gather(*(one(i) for i in range(16)))
        finally:
            await eng.shutdown()
    for i, out in enumerate(asyncio.run(main())):
        c = out.outputs[0]
        if i % 4 == 0:
            jsonschema.validate(json.loads(c.text), SCHEMA)
        elif i % 4 == 1:
            assert re.fullmatch(regex, c.text)
        elif i % 4 == 2:
            assert c.text in ("up", "down")
        assert c.finish_reason == ("length" if i % 4 == 3 else "stop")


@pytest.fixture(scope="module")
def thinking_model(tmp_path_factory):
    """A tiny random Qwen3 whose tokenizer has the think tokens (ids 512 and 513)."""
    from transformers import AutoTokenizer

    from tests.conftest import build_tiny_model
    path = str(tmp_path_factory.mktemp("qwen3-think"))
    build_tiny_model(path, "qwen3", vocab_size=520)
    tok = AutoTokenizer.from_pretrained(path)
    tok.add_tokens(["<think>", "</think>"])
    tok.save_pretrained(path)
    return path


def test_constraint_applies_after_thinking(thinking_model):
    llm = LLM(model=thinking_model, structured_outputs_config={"reasoning_parser": "deepseek_r1"})
    tok = llm.get_tokenizer()
    start, end = tok.convert_tokens_to_ids(["<think>", "</think>"])
    choice = StructuredOutputsParams(choice=["yes", "no"])
    thought = llm.generate({"prompt_token_ids": [1, 40, start, 50, end]},
                           sp(temperature=0, structured_outputs=choice))[0].outputs[0]
    assert thought.text in ("yes", "no")  # the template closed the thinking: constrained
    thinking = llm.generate({"prompt_token_ids": [1, 40, start]},
                            sp(temperature=0, max_tokens=12, structured_outputs=choice))
    assert thinking[0].outputs[0].text not in ("yes", "no")  # still thinking: free text


def test_reasoning_parser_refuses_a_tokenizer_without_think_tokens(stories_path):
    with pytest.raises(ValueError, match="needs the tokens <think> and </think>"):
        LLM(model=stories_path, structured_outputs_config={"reasoning_parser": "qwen3"})
