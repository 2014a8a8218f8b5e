"""Scheduler: continuous batching under a token budget and a sequence cap.

Every step it first gives running requests their next tokens (a decode is one token, a long
prompt continues in chunks), then admits waiting requests while budget, sequence slots and KV
blocks last. When blocks run out the newest running request is preempted: its blocks are
freed and it goes back to the front of the queue, to be recomputed later.
"""
import time
from collections import deque
from dataclasses import dataclass

from pagedserve.engine.block_manager import BlockManager
from pagedserve.engine.request import Request, RequestStatus


@dataclass(slots=True)
class SchedulerOutput:
    """The step's requests, in batch order, and how many new tokens each computes."""
    requests: list[Request]
    num_new_tokens: list[int]

    @property
    def total_tokens(self) -> int:
        return sum(self.num_new_tokens)


def _decodes_first(out: SchedulerOutput) -> SchedulerOutput:
    """Single-token sequences first, shortest context first, then the multi-token prefills in
    their order: attention runs the decodes as one batch (or in chunks of similar lengths,
    see AttentionMetadata.decode_chunk) and pads only the prefills."""
    reqs, nums = out.requests, out.num_new_tokens

    def key(i: int) -> tuple[bool, int]:
        return nums[i] != 1, reqs[i].num_tokens if nums[i] == 1 else 0
    order = sorted(range(len(reqs)), key=key)
    return SchedulerOutput([reqs[i] for i in order], [nums[i] for i in order])


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int,
                 max_num_batched_tokens: int) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput([], [])
        budget = self.max_num_batched_tokens
        preempted = self._schedule_running(out, budget)
        if not preempted:
            self._admit_waiting(out, budget - out.total_tokens)
        return _decodes_first(out)

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> bool:
        preempted, i = False, 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self.block_manager.allocate(req, n):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is req:
                    return preempted
            out.requests.append(req)
            out.num_new_tokens.append(n)
            budget -= n
            i += 1
        return preempted

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        bm = self.block_manager
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            cached = bm.find_cached_prefix(req)
            n = min(req.num_tokens - len(cached) * bm.block_size, budget)
            if not bm.can_admit(req, cached, n):
                break
            self.waiting.popleft()
            bm.admit(req, cached)
            allocated = bm.allocate(req, n)  # can_admit said the pool has room
            assert allocated, "can_admit and allocate disagree about free blocks"
            req.status = RequestStatus.RUNNING
            if req.first_scheduled_time is None:
                req.first_scheduled_time = time.monotonic()
            self.running.append(req)
            out.requests.append(req)
            out.num_new_tokens.append(n)
            budget -= n

    def _preempt(self, req: Request) -> None:
        self.block_manager.free_request(req)
        req.status = RequestStatus.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def finish_step(self, out: SchedulerOutput) -> None:
        """Account the step's computed tokens; hash full blocks; drop finished requests."""
        for req, n in zip(out.requests, out.num_new_tokens):
            req.num_computed_tokens += n
            self.block_manager.commit(req)
        if any(r.finished for r in out.requests):
            for req in [r for r in self.running if r.finished]:
                self._release(req)

    def abort(self, req: Request) -> None:
        """Remove req wherever it is and give its blocks back."""
        if req in self.waiting:
            self.waiting.remove(req)
        self._release(req)

    def _release(self, req: Request) -> None:
        if req in self.running:
            self.running.remove(req)
        self.block_manager.free_request(req)
