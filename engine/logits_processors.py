"""Per-request token controls applied to a step's logits before sampling (vLLM's names).

allowed_token_ids keeps only those tokens, bad_words bans each word's last token once the
tokens before it are there, logit_bias adds a bias per token id. Rows without these controls
cost nothing.
"""
import torch

from pagedserve.engine.request import Request

_NEG_INF = float("-inf")


def _bans_bad_words(req: Request) -> list[int]:
    """Token ids that would complete one of the request's bad words now."""
    out = req.output_token_ids
    banned = []
    for word in req.params.bad_words_token_ids:
        prefix = word[:-1]
        if len(prefix) <= len(out) and (not prefix or out[len(out) - len(prefix):] == prefix):
            banned.append(word[-1])
    return banned


def _allowed_mask(ids: list[int], vocab: int, device: torch.device) -> torch.Tensor:
    keep = torch.zeros(vocab, dtype=torch.bool, device=device)
    keep[torch.tensor(ids, dtype=torch.long, device=device)] = True
    return keep


def apply_token_controls(logits: torch.Tensor, reqs: list[Request]) -> None:
    """In place: logits [num_rows, vocab] of the requests in `reqs`, row for row."""
    vocab = logits.shape[-1]
    for i, r in enumerate(reqs):
        p = r.params
        if p.allowed_token_ids:
            logits[i].masked_fill_(~_allowed_mask(p.allowed_token_ids, vocab, logits.device),
                                   _NEG_INF)
        if p.bad_words_token_ids:
            banned = [t for t in _bans_bad_words(r) if t < vocab]
            if banned:
                logits[i, banned] = _NEG_INF
        if p.logit_bias:
            ids = [t for t in p.logit_bias if t < vocab]
            logits[i, ids] += torch.tensor([p.logit_bias[t] for t in ids], device=logits.device)


def has_token_controls(reqs: list[Request]) -> bool:
    return any(r.params.allowed_token_ids or r.params.bad_words_token_ids or r.params.logit_bias
               for r in reqs)
