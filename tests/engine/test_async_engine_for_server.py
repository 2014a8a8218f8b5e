"""What the server relies on in the engine: num_waiting (--max-queue-len), coalesced outputs for
slow consumers, request fields checked before they reach a step."""
import asyncio

import pytest

from pagedserve.engine import AsyncLLMEngine, EngineConfig, SamplingParams


def test_num_waiting_counts_queued_and_unscheduled_sequences(stories_path):
    async def main():
        eng = AsyncLLMEngine.from_config(EngineConfig(model=stories_path, max_num_seqs=1,
                                                      num_kv_blocks=64))
        long = SamplingParams(max_tokens=300, ignore_eos=True)
        first = eng.generate("Once upon a time", long)
        await first.__anext__()  # running: the only sequence slot is taken
        assert eng.stats().num_waiting == 0
        second = eng.generate("A cat", SamplingParams(n=2, max_tokens=300, ignore_eos=True))
        pending = asyncio.ensure_future(second.__anext__())
        await asyncio.sleep(0)  # queued for the loop, not yet in the scheduler
        assert eng.stats().num_waiting == 2
        await asyncio.sleep(0.05)  # handed to the scheduler, still waiting for a slot
        assert eng.stats().num_waiting == 2
        await first.aclose()  # the slot frees: one of the two sequences gets it
        await pending
        assert eng.stats().num_waiting == 1
        await second.aclose()
        await eng.shutdown()
    asyncio.run(main())


def test_slow_consumer_gets_the_newest_cumulative_output(stories_path):
    """A consumer that falls behind gets the newest cumulative output at its next read, not
    a backlog. Made deterministic by reading again only once the engine has generated every
    token (its counters), instead of by sleeping and hoping the engine is faster."""
    async def main():
        eng = AsyncLLMEngine.from_config(EngineConfig(model=stories_path, num_kv_blocks=64))
        params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
        stream = eng.generate("Once upon a time", params)
        outs = [await stream.__anext__()]
        while eng.stats().num_generation_tokens < 40:
            await asyncio.sleep(0.01)  # the consumer lags: the engine runs ahead
        outs += [out async for out in stream]
        seen = [len(out.outputs[0].token_ids) for out in outs]
        fast = [out async for out in eng.generate("Once upon a time", params)]
        assert seen[-1] == 40 and len(seen) <= 2, seen  # one merged output, not a backlog
        last, alone = outs[-1].outputs[0], fast[-1].outputs[0]
        assert (alone.text, alone.token_ids) == (last.text, last.token_ids)
        await eng.shutdown()
    asyncio.run(main())


def test_seed_out_of_64_bit_range_names_the_field():
    # a huge seed used to fail deep in torch ("Overflow when unpacking long long")
    for bad in (2**70, -2**63 - 1):
        with pytest.raises(ValueError, match="seed"):
            SamplingParams(seed=bad)
    assert SamplingParams(seed=2**63 - 1).seed == 2**63 - 1
