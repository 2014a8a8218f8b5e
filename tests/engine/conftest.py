"""Engine test helpers: reference greedy decoding with Hugging Face transformers."""
import random

import pytest
import torch


@pytest.fixture(scope="session")
def hf_greedy():
    """hf_greedy(path, prompts, max_tokens) -> per-prompt token ids from transformers generate."""
    import transformers
    models = {}

    def run(path: str, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
        if path not in models:
            models[path] = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
        out = []
        for ids, n in zip(prompts, max_tokens):
            with torch.no_grad():
                gen = models[path].generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n,
                                            do_sample=False, pad_token_id=0)
            out.append(gen[0, len(ids):].tolist())
        return out
    return run


@pytest.fixture(scope="session")
def mixed_prompts():
    """Eight prompts of different lengths (token ids) with different max_tokens."""
    rng = random.Random(0)
    prompts = [[1] + [rng.randrange(3, 512) for _ in range(length)]
               for length in (3, 40, 9, 70, 17, 1, 33, 55)]
    return prompts, [12, 5, 20, 9, 16, 24, 7, 11]
