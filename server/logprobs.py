"""Log-probabilities in the API's shapes: the legacy completions object, chat's content list,
and vLLM's prompt_logprobs. Token strings are the token's own decode, or "token_id:<id>" with
return_tokens_as_token_ids, so top_logprobs keys and `tokens` always match.
"""
from pagedserve.engine.detokenizer import Detokenizer
from pagedserve.engine.sampling_params import SamplingParams
from pagedserve.server.protocol import CompletionLogprobs, Logprob, TokenLogprob, TopLogprob


class TokenStrings:
    """How a request shows token ids: decoded one by one, or as "token_id:<id>"."""

    def __init__(self, tokenizer, as_ids: bool) -> None:
        self.tokenizer, self.as_ids = tokenizer, as_ids

    def __call__(self, token_id: int) -> str:
        return f"token_id:{token_id}" if self.as_ids else self.tokenizer.decode([token_id])


def top_logprobs(lps: dict[int, float], k: int) -> list[tuple[int, float]]:
    return sorted(lps.items(), key=lambda kv: -kv[1])[:k]


class TextOffsets:
    """Where each token's text starts in the sequence's text, fed token by token (so a stream
    and a whole answer give the same offsets). Held bytes count for the token that ends them."""

    def __init__(self, tokenizer, context_ids: list[int], skip_special_tokens: bool,
                 start: int = 0) -> None:
        self.detok = Detokenizer(tokenizer, context_ids,
                                 SamplingParams(skip_special_tokens=skip_special_tokens))
        self.start = start

    def feed(self, token_ids: list[int]) -> list[int]:
        out = []
        for tid in token_ids:
            out.append(self.start + len(self.detok.text))
            self.detok.add(tid)
        return out


def completion_logprobs(strings: TokenStrings, token_ids: list[int],
                        logprobs: list[dict[int, float] | None], k: int,
                        offsets: list[int]) -> CompletionLogprobs:
    """The legacy shape; top_logprobs holds the top k and the chosen token (as vLLM), and a
    None entry (the first prompt token) has no logprob."""
    lp = CompletionLogprobs()
    for tid, d, offset in zip(token_ids, logprobs, offsets):
        lp.tokens.append(strings(tid))
        lp.text_offset.append(offset)
        if d is None:
            lp.token_logprobs.append(None)
            lp.top_logprobs.append(None)
            continue
        lp.token_logprobs.append(d[tid])
        top = dict(top_logprobs(d, k))
        top[tid] = d[tid]
        lp.top_logprobs.append({strings(i): v for i, v in top.items()})
    return lp


def _entry(strings: TokenStrings, token_id: int, logprob: float) -> dict:
    text = strings(token_id)
    return {"token": text, "logprob": max(logprob, -9999.0), "bytes": list(text.encode())}


def chat_logprobs(strings: TokenStrings, token_ids: list[int],
                  logprobs: list[dict[int, float]], k: int) -> list[TokenLogprob]:
    return [TokenLogprob(**_entry(strings, tid, d[tid]),
                         top_logprobs=[TopLogprob(**_entry(strings, i, v))
                                       for i, v in top_logprobs(d, k)])
            for tid, d in zip(token_ids, logprobs)]


def prompt_logprobs(strings: TokenStrings, prompt_ids: list[int],
                    logprobs: list[dict[int, float] | None] | None,
                    k: int) -> list[dict[int, Logprob] | None] | None:
    """vLLM's prompt_logprobs: per prompt token, the token's and the top k's logprob with rank
    and decoded text; None for the first token, which nothing predicts."""
    if logprobs is None:
        return None
    out: list[dict[int, Logprob] | None] = []
    for tid, d in zip(prompt_ids, logprobs):
        if d is None:
            out.append(None)
            continue
        top = top_logprobs(d, k)
        ranks = {i: r for r, (i, _) in enumerate(top, 1)}
        keep = dict(top)
        keep[tid] = d[tid]
        # the prompt token's rank is known when it is among the top k (else None)
        out.append({i: Logprob(logprob=v, rank=ranks.get(i), decoded_token=strings(i))
                    for i, v in keep.items()})
    return out
