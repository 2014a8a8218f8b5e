"""Memory pressure: concurrent requests needing ~10x the KV pool all finish, by preemption
and recompute, with the same greedy text as a server with room to spare."""
import asyncio

import httpx

BLOCK_SIZE, POOL_BLOCKS = 16, 8
NUM_REQUESTS, MAX_TOKENS = 16, 64  # 5 blocks each: 80 blocks wanted, 8 in the pool
PROMPTS = [f"Once upon a time, {name} went to the" for name in (
    "Tom", "Lily", "Ben", "Sue", "a cat", "a dog", "Tim", "Amy", "the king", "a bird",
    "Max", "Mia", "a fish", "Sam", "Zoe", "a frog")]


async def complete_all(url: str, headers: dict, at_once: int = NUM_REQUESTS) -> list[dict]:
    rs = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as client:
        for i in range(0, NUM_REQUESTS, at_once):
            rs += await asyncio.gather(*[client.post("/v1/completions", json={
                "prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True})
                for p in PROMPTS[i:i + at_once]])
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
    return [r.json()["choices"][0] for r in rs]


def test_ten_times_the_kv_pool_finishes_with_unpressured_outputs(start_server, server):
    assert len(PROMPTS) == NUM_REQUESTS
    small = start_server(["--num-kv-blocks", str(POOL_BLOCKS), "--block-size", str(BLOCK_SIZE),
                          "--max-model-len", str(POOL_BLOCKS * BLOCK_SIZE)])
    try:
        pressured = asyncio.run(complete_all(small.url, {}))
        preemptions = small.metric("pagedserve:num_preemptions_total")
        assert preemptions > 0  # the pool really was too small for the batch
        assert small.wait_metric("pagedserve:kv_cache_usage_perc", lambda v: v == 0) == 0
        assert small.metric("pagedserve:num_requests_running") == 0
    finally:
        small.terminate()
    # the shared server bounds its queue (--max-queue-len): a few at a time
    reference = asyncio.run(complete_all(server.url, server.headers, at_once=4))
    assert [c["finish_reason"] for c in pressured] == ["length"] * NUM_REQUESTS
    assert [c["text"] for c in pressured] == [c["text"] for c in reference]
    print(f"pressure: {NUM_REQUESTS} requests x {MAX_TOKENS} tokens over {POOL_BLOCKS} blocks "
          f"of {BLOCK_SIZE}: {preemptions:.0f} preemptions, outputs equal")
