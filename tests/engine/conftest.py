"""Engine test helpers: reference greedy decoding with Hugging Face transformers."""
import random

import pytest
import torch


@pytest.fixture(scope="session")
def hf_model():
    """hf_model(path) -> the transformers model of the folder, loaded once per session."""
    import functools

    import transformers
    return functools.cache(lambda path: transformers.AutoModelForCausalLM.from_pretrained(
        path).eval())


@pytest.fixture(scope="session")
def hf_greedy(hf_model):
    """hf_greedy(path, prompts, max_tokens) -> per-prompt token ids from transformers generate."""
    def run(path: str, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
        out = []
        for ids, n in zip(prompts, max_tokens):
            with torch.no_grad():
                gen = hf_model(path).generate(torch.tensor([ids]), max_new_tokens=n,
                                              min_new_tokens=n, do_sample=False, pad_token_id=0)
            out.append(gen[0, len(ids):].tolist())
        return out
    return run


@pytest.fixture(scope="session")
def assert_matches_hf(hf_greedy, hf_model):
    """assert_matches_hf(path, prompts, max_tokens, ours): our greedy tokens are transformers',
    except that after a near-tie (the reference's two best logits within TIE of each other,
    ours one of them) the rest is not compared: fp32 sums in another order pick either."""
    def near_tie(path: str, ids: list[int], token: int) -> bool:
        with torch.no_grad():
            logits = hf_model(path)(torch.tensor([ids])).logits[0, -1]
        top = logits.topk(2)
        return bool(top.values[0] - top.values[1] <= TIE and token in top.indices.tolist())

    def check(path: str, prompts, max_tokens, ours) -> None:
        for ids, got, want in zip(prompts, ours, hf_greedy(path, prompts, max_tokens)):
            i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
            assert len(got) == len(want)
            assert i is None or near_tie(path, ids + want[:i], got[i]), (ids, got, want)
    return check


TIE = 1e-4


@pytest.fixture(scope="session")
def mixed_prompts():
    """Eight prompts of different lengths (token ids) with different max_tokens."""
    rng = random.Random(0)
    prompts = [[1] + [rng.randrange(3, 512) for _ in range(length)]
               for length in (3, 40, 9, 70, 17, 1, 33, 55)]
    return prompts, [12, 5, 20, 9, 16, 24, 7, 11]
