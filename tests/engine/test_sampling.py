"""Sampling: seeds reproduce, batch mates don't matter, filters behave, params validate."""
import pytest

from pagedserve import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(stories_path):
    return LLM(stories_path)


def texts(llm, prompts, params):
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def test_seeded_sampling_is_reproducible_and_batch_independent(llm):
    seeded = SamplingParams(temperature=1.0, seed=1234, max_tokens=24)
    alone = texts(llm, ["Once upon a time"], seeded)[0]
    assert texts(llm, ["Once upon a time"], seeded)[0] == alone
    crowd = ["The dog", "Once upon a time", "Tom and Sue went", "Once upon a time"]
    params = [SamplingParams(temperature=1.0, max_tokens=30), seeded,
              SamplingParams(temperature=0.7, seed=9, max_tokens=12), SamplingParams(temperature=0)]
    assert texts(llm, crowd, params)[1] == alone


def test_different_seeds_give_different_samples(llm):
    outs = [texts(llm, ["Once upon a time"],
                  SamplingParams(temperature=1.0, seed=s, max_tokens=24))[0]
            for s in range(4)]
    assert len({tuple(o) for o in outs}) > 1


def test_top_k_1_equals_greedy(llm):
    prompts = ["Once upon a time", "The little cat"]
    greedy = texts(llm, prompts, SamplingParams(temperature=0, max_tokens=30))
    sampled = texts(llm, prompts, SamplingParams(temperature=1.3, top_k=1, seed=5, max_tokens=30))
    assert sampled == greedy


def test_tiny_top_p_and_high_min_p_collapse_to_greedy(llm):
    greedy = texts(llm, ["Once upon a time"], SamplingParams(temperature=0, max_tokens=20))
    prompts = ["Once upon a time"]
    assert texts(llm, prompts, SamplingParams(top_p=1e-6, seed=3, max_tokens=20)) == greedy
    assert texts(llm, prompts, SamplingParams(min_p=1.0, seed=3, max_tokens=20)) == greedy


def test_repetition_penalty_changes_greedy_text(llm):
    plain = texts(llm, ["Once upon a time"], SamplingParams(temperature=0, max_tokens=40))[0]
    penalised = texts(llm, ["Once upon a time"],
                      SamplingParams(temperature=0, max_tokens=40, repetition_penalty=2.0,
                                     frequency_penalty=1.0))[0]
    assert penalised != plain
    assert len(set(penalised)) >= len(set(plain))


def test_logprobs_are_log_probabilities_of_the_chosen_tokens(llm):
    out = llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=5, logprobs=3),
                       use_tqdm=False)[0].outputs[0]
    assert len(out.logprobs) == 5
    for token, lp in zip(out.token_ids, out.logprobs):
        assert token in lp and len(lp) <= 4 and all(v <= 0 for v in lp.values())
        assert lp[token] == max(lp.values())  # greedy picks the most likely token
    total = sum(lp[t] for t, lp in zip(out.token_ids, out.logprobs))
    assert out.cumulative_logprob == pytest.approx(total)


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.5), ("top_p", 0.0), ("top_p", 1.5), ("max_tokens", 0), ("max_tokens", -3),
    ("n", 0), ("top_k", -2), ("min_p", 2.0), ("repetition_penalty", 0.0), ("logprobs", -1),
    ("presence_penalty", 3.0), ("stop", [""]),
])
def test_invalid_sampling_params_name_field_and_value(field, value):
    with pytest.raises(ValueError, match=field) as e:
        SamplingParams(**{field: value})
    assert repr(value) in str(e.value)


def test_min_tokens_above_max_tokens_is_rejected():
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(min_tokens=10, max_tokens=5)
