"""Requests through LLMEngine and AsyncLLMEngine: batching, abort, nothing left behind."""
import asyncio

import pytest

from pagedserve import SamplingParams
from pagedserve.engine import AsyncLLMEngine, EngineConfig, LLMEngine


@pytest.fixture(scope="module")
def engine(stories_path):
    return LLMEngine(EngineConfig(model=stories_path, num_kv_blocks=24, max_model_len=128))


def pool_is_empty(engine: LLMEngine) -> bool:
    bm = engine.block_manager
    return bm.num_free_blocks == bm.num_blocks and not engine.has_unfinished_requests()


def test_abort_at_any_moment_returns_all_blocks(engine):
    params = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)
    ids = [engine.add_request(None, f"{i} Once upon a time " * 6, params) for i in range(6)]
    for step in range(40):
        engine.step()
        if step == 2:
            out = engine.abort_request(ids[0])  # running
            assert out.finished and out.outputs[0].finish_reason == "abort"
    assert engine.scheduler.num_preemptions > 0, "the small pool should have forced preemption"
    for rid in ids[1:]:
        engine.abort_request(rid)
    assert pool_is_empty(engine)
    assert engine.abort_request("no-such-request") is None


def test_continuous_batching_admits_new_requests_mid_flight(engine):
    params = SamplingParams(temperature=0, max_tokens=8)
    engine.add_request("early", "Once upon a time", params)
    engine.step()
    engine.add_request("late", "The little dog", params)
    out = engine.step()
    assert {o.request_id for o in out} == {"early", "late"}
    while engine.has_unfinished_requests():
        engine.step()
    assert pool_is_empty(engine)


def test_duplicate_request_id_is_rejected(engine):
    engine.add_request("dup", "Hi", SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="dup"):
        engine.add_request("dup", "Hi", SamplingParams(max_tokens=2))
    engine.abort_request("dup")
    assert pool_is_empty(engine)


def idle(eng: AsyncLLMEngine) -> bool:
    s = eng.stats()
    return s.kv_cache_usage == 0 and s.num_running == 0 and s.num_waiting == 0


@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "core-process"])
def test_async_generate_batches_and_cancellation_aborts(stories_path, in_process):
    async def main():
        eng = AsyncLLMEngine.from_config(EngineConfig(model=stories_path), in_process)
        params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)

        async def consume(prompt):
            async for out in eng.generate(prompt, params):
                last = out
            return last
        outs = await asyncio.gather(*[consume(f"Story {i}:") for i in range(8)])
        assert all(len(o.outputs[0].token_ids) == 20 for o in outs)
        assert eng.stats().num_steps < 8 * 20 / 2, "concurrent requests were not batched"
        stream = eng.generate("Once upon a time", SamplingParams(max_tokens=200, ignore_eos=True))
        await stream.__anext__()
        assert eng.stats().kv_cache_usage > 0
        await stream.aclose()  # the client went away
        for _ in range(200):
            await asyncio.sleep(0.01)
            if idle(eng):
                break
        assert idle(eng) and not eng.collectors
        with pytest.raises(ValueError, match="empty"):
            async for _ in eng.generate("", params):
                pass
        await eng.shutdown()
    asyncio.run(main())


@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "core-process"])
def test_a_request_id_is_reusable_right_after_its_abort(stories_path, in_process):
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)

    async def main():
        eng = AsyncLLMEngine.from_config(EngineConfig(model=stories_path), in_process)
        try:
            texts = []
            for _ in range(3):  # aborted mid-generation, then reused at once
                early = eng.generate("Once upon a time", SamplingParams(max_tokens=100), "x")
                await early.__anext__()
                await early.aclose()
                outs = [o async for o in eng.generate("Once upon a time", greedy, "x")]
                texts.append(outs[-1].outputs[0].text)
            assert eng.is_running
            return texts
        finally:
            await eng.shutdown()
    texts = asyncio.run(main())
    want = LLMEngine(EngineConfig(model=stories_path))
    want.add_request("w", "Once upon a time", greedy)
    while want.has_unfinished_requests():
        final = want.step()
    assert texts == [final[0].outputs[0].text] * 3
