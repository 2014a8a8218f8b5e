"""Offline RequestOutput.prompt_logprobs equal transformers' log-likelihoods, through chunked
prefill and with a cached prefix in the pool (such requests do not read the prefix cache)."""
import pytest
import torch
import transformers

from pagedserve import LLM, SamplingParams

TEXT = ("Once upon a time there was a little girl named Lily. She loved to play outside in the "
        "park with her dog")


@pytest.fixture(scope="module")
def reference(stories_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(stories_path).eval()

    def run(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return run


def test_prompt_logprobs_match_transformers(stories_path, reference):
    # a 16-token budget prefills the prompt in three chunks
    llm = LLM(stories_path, num_kv_blocks=64, max_num_batched_tokens=16)
    ids = llm.get_tokenizer().encode(TEXT)
    llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1), use_tqdm=False)
    out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=2, prompt_logprobs=3),
                       use_tqdm=False)[0]
    lp = reference(ids)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(ids)
    for pos, (entry, token) in enumerate(zip(out.prompt_logprobs[1:], ids[1:]), 1):
        assert entry[token] == pytest.approx(lp[pos - 1, token].item(), abs=1e-4)
        top = lp[pos - 1].topk(3).indices.tolist()
        assert set(top) <= set(entry) and len(entry) <= 4


def test_prompt_logprobs_field_is_checked(stories_path):
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=-1)
    llm = LLM(stories_path, num_kv_blocks=64)
    with pytest.raises(ValueError, match="prompt_logprobs"):
        llm.generate(["Hi"], SamplingParams(prompt_logprobs=10**6), use_tqdm=False)
    assert llm.generate(["Hi"], SamplingParams(max_tokens=2),
                        use_tqdm=False)[0].prompt_logprobs is None
