"""When generation stops: stop strings, stop token ids, EOS, ignore_eos, min_tokens, n > 1."""
import pytest

from pagedserve import LLM, SamplingParams

PROMPT = "Once upon a time"
GREEDY = ", there was a little girl named Lily. She loved to play outside in the park."


@pytest.fixture(scope="module")
def llm(stories_path):
    return LLM(stories_path)


def run(llm, params, prompt=PROMPT):
    return llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]


def test_stop_string_spanning_tokens_cuts_the_text(llm):
    # "girl" is three tokens here: "▁g", "ir", "l"
    out = run(llm, SamplingParams(temperature=0, max_tokens=40, stop=["ttle gi", "zebra"]))
    assert out.text == ", there was a li"
    assert (out.finish_reason, out.stop_reason) == ("stop", "ttle gi")


def test_stop_string_kept_when_asked(llm):
    out = run(llm, SamplingParams(temperature=0, max_tokens=40, stop="Lily",
                                  include_stop_str_in_output=True))
    assert out.text == ", there was a little girl named Lily"


def test_earliest_stop_string_wins(llm):
    out = run(llm, SamplingParams(temperature=0, max_tokens=40, stop=["park", "Lily", "girl"]))
    assert out.text == ", there was a little " and out.stop_reason == "girl"


def test_stop_token_id(llm):
    tok = llm.get_tokenizer()
    lily = tok.convert_tokens_to_ids("▁Lily")
    out = run(llm, SamplingParams(temperature=0, max_tokens=40, stop_token_ids=[lily]))
    assert out.token_ids[-1] == lily and out.stop_reason == lily and out.finish_reason == "stop"
    assert out.text == ", there was a little girl named"


def test_max_tokens_gives_length(llm):
    out = run(llm, SamplingParams(temperature=0, max_tokens=7))
    assert len(out.token_ids) == 7 and out.finish_reason == "length" and out.stop_reason is None


def test_min_tokens_defers_stop_strings(llm):
    early = run(llm, SamplingParams(temperature=0, max_tokens=40, stop="there"))
    assert early.text == ", "
    late = run(llm, SamplingParams(temperature=0, max_tokens=40, stop="there", min_tokens=3))
    assert len(late.token_ids) >= 3 and late.text.startswith(", there was")


def test_eos_ignore_eos_and_min_tokens(tiny_model):
    # Make the model's EOS the token greedy decoding emits 4th, then check each rule.
    free = LLM(tiny_model("llama")).generate(
        {"prompt_token_ids": [1, 50, 60]},
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
        use_tqdm=False)[0].outputs[0].token_ids
    eos = free[3]
    assert eos not in free[:3]
    llm = LLM(tiny_model("llama", eos_token_id=eos))
    prompt = {"prompt_token_ids": [1, 50, 60]}
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids == free[:4] and out.finish_reason == "stop" and out.stop_reason is None
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids == free and out.finish_reason == "length"
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12, min_tokens=6),
                       use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) >= 6 and eos not in out.token_ids[:6]


def test_n_samples(llm):
    out = llm.generate(PROMPT, SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=16),
                       use_tqdm=False)[0]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert all(o.finish_reason is not None and len(o.token_ids) > 0 for o in out.outputs)
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1
    greedy = llm.generate(PROMPT, SamplingParams(n=2, temperature=0, max_tokens=16),
                          use_tqdm=False)[0]
    assert greedy.outputs[0].token_ids == greedy.outputs[1].token_ids
    assert greedy.outputs[0].text == GREEDY[:len(greedy.outputs[0].text)]
