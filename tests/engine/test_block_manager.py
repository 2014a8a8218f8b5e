"""BlockManager: reference counts, prefix hashing, eviction order, no leaks."""
from pagedserve.engine.block_manager import BlockManager
from pagedserve.engine.request import Request
from pagedserve.engine.sampling_params import SamplingParams


def make_req(tokens: list[int], rid: str = "r") -> Request:
    return Request(rid, rid, 0, tokens, SamplingParams(), 16, frozenset())


def admit(bm: BlockManager, req: Request) -> int:
    cached = bm.find_cached_prefix(req)
    n = req.num_tokens - len(cached) * bm.block_size
    assert bm.can_admit(req, cached, n)
    bm.admit(req, cached)
    assert bm.allocate(req, n)
    req.num_computed_tokens += n
    bm.commit(req)
    return len(cached)


def test_allocate_and_free_return_every_block():
    bm = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=False)
    req = make_req(list(range(10)))
    admit(bm, req)
    assert len(req.block_table) == 3 and bm.num_free_blocks == 7
    assert bm.usage == 0.3
    bm.free_request(req)
    assert bm.num_free_blocks == 10 and bm.usage == 0.0


def test_shared_prefix_is_reused_and_reference_counted():
    bm = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    a, b = make_req(list(range(10)), "a"), make_req(list(range(8)) + [99, 98, 97], "b")
    assert admit(bm, a) == 0
    assert admit(bm, b) == 2  # two full blocks shared
    assert a.block_table[:2] == b.block_table[:2]
    assert [bm.blocks[i].ref_count for i in a.block_table[:2]] == [2, 2]
    assert b.num_cached_tokens == 8
    assert (bm.prefix_queries, bm.prefix_hits) == (10 + 11, 8)
    bm.free_request(a)
    assert [bm.blocks[i].ref_count for i in b.block_table[:2]] == [1, 1]
    bm.free_request(b)
    assert bm.num_free_blocks == 10


def test_different_prefix_same_block_tokens_does_not_match():
    bm = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    admit(bm, make_req([1, 2, 3, 4, 5, 6, 7, 8, 9], "a"))
    # block 2's tokens equal a's block 2, but the parent differs: the chained hash must miss
    assert admit(bm, make_req([0, 2, 3, 4, 5, 6, 7, 8, 9], "b")) == 0


def test_last_token_is_never_served_from_cache():
    bm = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    a = make_req(list(range(8)), "a")
    admit(bm, a)
    bm.free_request(a)
    again = make_req(list(range(8)), "b")
    assert admit(bm, again) == 1  # 8 tokens = 2 blocks, but one token must be computed


def test_freed_blocks_stay_findable_until_reused_lru():
    bm = BlockManager(num_blocks=4, block_size=4, enable_prefix_caching=True)
    a = make_req(list(range(9)), "a")
    admit(bm, a)
    bm.free_request(a)
    assert admit(bm, make_req(list(range(9)), "a2")) == 2
    bm = BlockManager(num_blocks=4, block_size=4, enable_prefix_caching=True)
    a = make_req(list(range(9)), "a")
    admit(bm, a)
    bm.free_request(a)
    filler = make_req([50 + i for i in range(13)], "f")  # needs all 4 blocks: evicts a's
    admit(bm, filler)
    bm.free_request(filler)
    assert admit(bm, make_req(list(range(9)), "a3")) == 0


def test_allocation_fails_cleanly_when_pool_is_short():
    bm = BlockManager(num_blocks=2, block_size=4, enable_prefix_caching=False)
    req = make_req(list(range(12)))
    assert not bm.allocate(req, 12)
    assert req.block_table == [] and bm.num_free_blocks == 2
