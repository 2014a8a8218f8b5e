"""BlockManager: the paged KV cache's block pool, reference counts and prefix cache.

A full block is identified by a chained hash of its parent's hash and its token ids, so two
requests with the same prefix map it to the same physical block. A freed block keeps its hash
and stays findable until the pool needs it again (least recently freed goes first).
"""
from collections import OrderedDict

from pagedserve.engine.request import Request
from pagedserve.kernels.utils import cdiv


def block_hash(parent: int | None, token_ids: tuple[int, ...]) -> int:
    return hash((parent, token_ids))


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] = ()


class BlockManager:
    """Allocates blocks to requests; `usage` is the KV-cache utilisation metric."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        assert num_blocks > 0 and block_size > 0
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[int, int] = {}  # hash -> block id
        self.prefix_queries = 0  # tokens looked up in the prefix cache
        self.prefix_hits = 0  # tokens found there

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return (len(self.blocks) - len(self.free)) / len(self.blocks)

    def blocks_needed(self, req: Request, num_new_tokens: int) -> int:
        total = req.num_computed_tokens + num_new_tokens
        return max(0, cdiv(total, self.block_size) - len(req.block_table))

    def find_cached_prefix(self, req: Request) -> list[int]:
        """Block ids holding the longest cached prefix of req; the last token is always left
        to compute so the step has a position to sample from."""
        # prompt logprobs need the logits of every prompt position: computed, never cached
        if not self.enable_prefix_caching or req.params.prompt_logprobs is not None:
            return []
        found, parent = [], None
        usable = (req.num_tokens - 1) // self.block_size
        for i in range(usable):
            tokens = tuple(req.token_ids[i * self.block_size:(i + 1) * self.block_size])
            h = block_hash(parent, tokens)
            block_id = self.cached.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            found.append(block_id)
            parent = h
        return found

    def can_admit(self, req: Request, cached: list[int], num_new_tokens: int) -> bool:
        reused_free = sum(1 for b in cached if self.blocks[b].ref_count == 0)
        total = len(cached) * self.block_size + num_new_tokens
        needed = cdiv(total, self.block_size) - len(cached)
        return needed + reused_free <= len(self.free)

    def admit(self, req: Request, cached: list[int]) -> None:
        """Give a waiting request its prefix-cache hits; new blocks come from `allocate`."""
        assert not req.block_table and req.num_computed_tokens == 0
        parent = None
        for block_id in cached:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1
            req.block_table.append(block_id)
            parent = block.hash
            req.block_hashes.append(parent)
        req.num_computed_tokens = req.num_cached_tokens = len(cached) * self.block_size
        if self.enable_prefix_caching:  # counted once per admission, like vLLM's metric
            self.prefix_queries += req.num_tokens
            self.prefix_hits += req.num_cached_tokens

    def allocate(self, req: Request, num_new_tokens: int) -> bool:
        """Grow req's block table to hold num_new_tokens more; False if the pool is short."""
        needed = self.blocks_needed(req, num_new_tokens)
        if needed > len(self.free):
            return False
        for _ in range(needed):
            block_id, _ = self.free.popitem(last=False)
            block = self.blocks[block_id]
            if block.hash is not None and self.cached.get(block.hash) == block_id:
                del self.cached[block.hash]
            block.hash, block.token_ids, block.ref_count = None, (), 1
            req.block_table.append(block_id)
        return True

    def commit(self, req: Request) -> None:
        """Hash the blocks that the last step filled, so later requests can share them."""
        if not self.enable_prefix_caching:
            return
        num_full = min(req.num_computed_tokens, req.num_tokens) // self.block_size
        for i in range(len(req.block_hashes), num_full):
            parent = req.block_hashes[-1] if req.block_hashes else None
            tokens = tuple(req.token_ids[i * self.block_size:(i + 1) * self.block_size])
            h = block_hash(parent, tokens)
            block = self.blocks[req.block_table[i]]
            if block.hash is None:
                block.hash, block.token_ids = h, tokens
                self.cached.setdefault(h, block.block_id)
            req.block_hashes.append(h)

    def free_request(self, req: Request) -> None:
        """Return all of req's blocks. Tail blocks join the free list first, so the prefix,
        the part most likely to be shared again, is the last to be evicted."""
        for block_id in reversed(req.block_table):
            block = self.blocks[block_id]
            assert block.ref_count > 0
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
        req.block_table.clear()
        req.block_hashes.clear()
        req.num_computed_tokens = 0
