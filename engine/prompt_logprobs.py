"""Prompt logprobs (SamplingParams.prompt_logprobs): the logprob of each prompt token given the
tokens before it, read from the logits of the prompt's positions while it is prefilled.

A step asks the model runner for the logits of every new token of such a request (not only the
last); position p predicts token p + 1. A prompt recomputed after preemption is not recorded
twice, and such requests skip the prefix cache (see BlockManager.find_cached_prefix), so every
prompt position is computed once.
"""
import torch

from pagedserve.engine.request import Request
from pagedserve.engine.scheduler import SchedulerOutput


def _wants(req: Request) -> bool:
    return req.prompt_logprobs is not None and len(req.prompt_logprobs) < req.num_prompt_tokens


def logit_counts(sched: SchedulerOutput) -> list[int] | None:
    """Logit rows per scheduled sequence, or None when every sequence needs only its last."""
    if not any(_wants(r) for r in sched.requests):
        return None
    return [n if _wants(r) else 1 for r, n in zip(sched.requests, sched.num_new_tokens)]


def _record(req: Request, start: int, logits: torch.Tensor) -> None:
    """logits: the rows of positions start, start + 1, ... of this step."""
    k = req.params.prompt_logprobs
    end = min(start + len(logits), req.num_prompt_tokens - 1)  # last position that predicts
    first = len(req.prompt_logprobs) - 1  # the next position to record
    if first >= end:
        return
    lp = torch.log_softmax(logits[first - start:end - start].float(), dim=-1)
    targets = req.token_ids[first + 1:end + 1]
    chosen = lp[torch.arange(len(targets)), torch.tensor(targets)].tolist()
    top_v, top_i = lp.topk(k, dim=-1) if k else (None, None)
    for row, (target, value) in enumerate(zip(targets, chosen)):
        entry = {target: value}
        if k:
            entry.update(zip(top_i[row].tolist(), top_v[row].tolist()))
        req.prompt_logprobs.append(entry)


def take_prompt_logprobs(sched: SchedulerOutput, counts: list[int],
                         logits: torch.Tensor) -> torch.Tensor:
    """Record the prompt logprobs in this step's rows; returns each sequence's last row."""
    last, row = [], 0
    for req, n, count in zip(sched.requests, sched.num_new_tokens, counts):
        if _wants(req):  # the rows are the chunk's last `count` positions
            _record(req, req.num_computed_tokens + n - count, logits[row:row + count])
        row += count
        last.append(row - 1)
    return logits[last]
