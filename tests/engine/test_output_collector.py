"""A lagging consumer's collector merges the core's deltas: nothing lost, nothing repeated."""
import asyncio

from pagedserve.engine.output_collector import RequestOutputCollector
from pagedserve.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from pagedserve.engine.sampling_params import RequestOutputKind


def delta(texts: list[str], ids: list[list[int]], done: list[bool]) -> RequestOutput:
    outs = [CompletionOutput(i, t, list(d), "stop" if f else None, "." if f else None)
            for i, (t, d, f) in enumerate(zip(texts, ids, done))]
    return RequestOutput("r", "p", [1], outs, all(done), RequestMetrics(0.0))


STEPS = [delta(["a", "x"], [[1], [7]], [False, False]),
         delta(["b", "."], [[2], [8]], [False, True]),  # sequence 1 ends
         delta(["c", ""], [[3], []], [True, True])]  # ... and its end is repeated


def collect(kind: RequestOutputKind) -> list[RequestOutput]:
    async def main():
        collector = RequestOutputCollector(kind)
        got = []
        for step in STEPS[:2]:  # the consumer looks only after two steps
            collector.put(step)
        got.append(await collector.get())
        collector.put(STEPS[2])
        got.append(await collector.get())
        return got
    return asyncio.run(main())


def test_deltas_merge_for_a_lagging_consumer():
    first, last = collect(RequestOutputKind.DELTA)
    assert [o.text for o in first.outputs] == ["ab", "x."]
    assert [o.token_ids for o in first.outputs] == [[1, 2], [7, 8]]
    assert first.outputs[1].stop_reason == "." and not first.finished
    assert last.outputs[0].text == "c" and last.finished


def test_cumulative_consumer_sees_everything_so_far():
    first, last = collect(RequestOutputKind.CUMULATIVE)
    assert [o.text for o in last.outputs] == ["abc", "x."]
    assert [o.token_ids for o in last.outputs] == [[1, 2, 3], [7, 8]]
    assert last.outputs[1].stop_reason == "." and last.finished
    assert first.outputs[0].text == "ab"  # an output already taken is not changed later
