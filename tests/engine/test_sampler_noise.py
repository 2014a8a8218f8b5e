"""Temperature sampling draws each token with its softmax probability; zero-probability
tokens (filtered or masked) are never drawn."""
import torch

from pagedserve.engine.request import Request
from pagedserve.engine.sampler import Sampler
from pagedserve.engine.sampling_params import SamplingParams


def _requests(n: int, params: SamplingParams) -> list[Request]:
    return [Request(str(i), str(i), 0, [5], params, 10, frozenset({2})) for i in range(n)]


def test_sampled_frequencies_follow_the_probabilities():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    rows = 40000
    logits = probs.log().expand(rows, -1).clone()
    tokens = Sampler(seed=0)(logits, _requests(rows, SamplingParams(temperature=1.0))).token_ids
    freq = torch.bincount(torch.tensor(tokens), minlength=4).float() / rows
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)


def test_filtered_tokens_are_never_drawn():
    rows = 5000
    logits = torch.tensor([2.0, 1.9, 1.8, 1.7]).expand(rows, -1).clone()
    params = SamplingParams(temperature=1.0, top_k=2)
    tokens = Sampler(seed=1)(logits, _requests(rows, params)).token_ids
    assert set(tokens) == {0, 1}
