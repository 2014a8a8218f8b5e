"""AsyncLLMEngine over an engine core process: the same results as in-process, output kinds,
load errors, and no process outlives what it belongs to (core killed, frontend killed)."""
import asyncio
import os
import signal
import subprocess
import sys

import pytest

from pagedserve.engine import AsyncLLMEngine, EngineConfig, LLMEngine, SamplingParams
from pagedserve.engine.async_engine import EngineDeadError
from pagedserve.engine.sampling_params import RequestOutputKind
from tests.support import wait_gone

GREEDY = dict(temperature=0, max_tokens=24, ignore_eos=True)


def test_output_kinds_match_the_in_process_engine(stories_path):
    prompt, n2 = "Once upon a time", dict(GREEDY, n=2, temperature=1.0, seed=7, logprobs=2)
    ref = LLMEngine(EngineConfig(model=stories_path, num_kv_blocks=64))
    expected = {}
    for rid, kw in (("greedy", GREEDY), ("sampled", n2)):  # one at a time, as below
        ref.add_request(rid, prompt, SamplingParams(**kw))
        while ref.has_unfinished_requests():
            for out in ref.step():
                expected[out.request_id] = out

    async def main():
        eng = AsyncLLMEngine.from_config(EngineConfig(model=stories_path, num_kv_blocks=64))
        assert eng.config.max_model_len == ref.config.max_model_len
        try:
            cum = [o async for o in eng.generate(prompt, SamplingParams(**n2))]
            kinds = {}  # a loop: an async comprehension inside a dict one needs Python 3.11
            for kind in (RequestOutputKind.DELTA, RequestOutputKind.FINAL_ONLY):
                kinds[kind] = [o async for o in eng.generate(
                    prompt, SamplingParams(**GREEDY, output_kind=kind))]
            # abort and reuse of an id reach the core in one message: the abort goes first
            first = eng.generate(prompt, SamplingParams(max_tokens=200), request_id="x")
            await first.__anext__()
            await first.aclose()
            again = [o async for o in eng.generate(prompt, SamplingParams(**GREEDY),
                                                   request_id="x")]
            assert again[-1].outputs[0].text == expected["greedy"].outputs[0].text
            assert eng.is_running
        finally:
            await eng.shutdown()
        return cum, kinds
    cum, kinds = asyncio.run(main())
    final, want = cum[-1], expected["sampled"]
    assert [o.text for o in final.outputs] == [o.text for o in want.outputs]
    assert [o.token_ids for o in final.outputs] == [o.token_ids for o in want.outputs]
    for got, ref_out in zip(final.outputs, want.outputs):  # the core may use fewer threads
        assert [d.keys() for d in got.logprobs] == [d.keys() for d in ref_out.logprobs]
        assert [list(d.values()) for d in got.logprobs] == [
            pytest.approx(list(d.values()), abs=1e-4) for d in ref_out.logprobs]
    # how many outputs arrive depends on how far the consumer lags (merged when it does), so
    # the kinds are checked by content: each cumulative output extends the one before it
    for before, after in zip(cum, cum[1:]):
        assert after.outputs[0].token_ids[:len(before.outputs[0].token_ids)] == \
            before.outputs[0].token_ids
    deltas, finals = kinds[RequestOutputKind.DELTA], kinds[RequestOutputKind.FINAL_ONLY]
    greedy = expected["greedy"].outputs[0]
    assert "".join(o.outputs[0].text for o in deltas) == greedy.text
    assert sum((o.outputs[0].token_ids for o in deltas), []) == greedy.token_ids
    assert len(finals) == 1 and finals[0].finished and finals[0].outputs[0].text == greedy.text
    # the pipe leaves the prompts out; every output still has them, as in-process
    for out in cum + deltas + finals:
        assert out.prompt == prompt
        assert out.prompt_token_ids == expected["greedy"].prompt_token_ids


def test_load_error_is_raised_by_from_config(stories_path):
    with pytest.raises(ValueError, match="fewer than max_model_len"):
        AsyncLLMEngine.from_config(EngineConfig(model=stories_path, num_kv_blocks=2))


def test_killed_core_fails_requests_and_the_engine(stories_path):
    async def main():
        eng = AsyncLLMEngine.from_config(EngineConfig(model=stories_path, num_kv_blocks=64))
        pid = eng.client.pid
        stream = eng.generate("Once upon a time", SamplingParams(max_tokens=400, ignore_eos=True))
        await stream.__anext__()
        assert eng.is_running and eng.stats().num_running == 1
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineDeadError, match="killed by signal 9"):
            async for _ in stream:
                pass
        assert not eng.is_running and "killed by signal 9" in str(eng.dead_error)
        with pytest.raises(EngineDeadError):
            async for _ in eng.generate("Hi", SamplingParams(max_tokens=2)):
                pass
        await eng.shutdown()
        return pid
    assert wait_gone(asyncio.run(main()))


SCRIPT = """
import asyncio, os, sys
from pagedserve.engine import AsyncLLMEngine, EngineConfig, SamplingParams

async def main():
    eng = AsyncLLMEngine.from_config(EngineConfig(model=sys.argv[1], num_kv_blocks=64))
    async for _ in eng.generate("Hi", SamplingParams(max_tokens=2)):
        pass
    print(eng.client.pid, flush=True)
    if sys.argv[2] == "wait":
        await asyncio.sleep(300)

if __name__ == "__main__":
    asyncio.run(main())
"""


@pytest.mark.parametrize("ending", ["exit", "kill"])
def test_core_ends_with_its_frontend(stories_path, tmp_path, ending):
    """A frontend that exits without shutdown(), or is killed outright, leaves no core."""
    script = tmp_path / "frontend.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), stories_path,
                             "wait" if ending == "kill" else "exit"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        core = int(proc.stdout.readline())
        if ending == "kill":
            proc.kill()
        assert proc.wait(60) in (0, -signal.SIGKILL)
        assert wait_gone(core), "the engine core outlived its frontend"
    finally:
        proc.kill()
        proc.wait()


def test_outputs_cross_the_pipe_as_tuples_without_the_prompts():
    import pickle

    from pagedserve.engine.core import CoreOutputs
    from pagedserve.engine.outputs import (
        CompletionOutput,
        RequestMetrics,
        RequestOutput,
        pack_outputs,
        unpack_outputs,
    )
    out = RequestOutput("r1", "Once", [1, 2, 3], [
        CompletionOutput(0, " upon", [7], None, None, [{7: -0.5}], -0.5),
        CompletionOutput(1, " a", [9], "stop", 9, None, None)], False,
        RequestMetrics(1.0, 1.5, 2.0, None, 2), [None, {2: -1.0}, {3: -2.0}])
    for sent in (unpack_outputs(pack_outputs([out])),
                 pickle.loads(pickle.dumps(CoreOutputs([out], None))).outputs):
        assert sent[0].prompt is None and sent[0].prompt_token_ids is None
        sent[0].prompt, sent[0].prompt_token_ids = out.prompt, out.prompt_token_ids
        assert sent == [out]  # every other field, in its place


def test_stop_and_the_reader_never_reap_the_core_at_once():
    # the reader joins the core when its pipe ends while stop() joins it too: two waitpids at
    # once made the loser see an exited core as alive ("did not stop in 10 s; killing it")
    import threading

    from pagedserve.engine.core_process import EngineCoreProcess

    class Proc:
        inside = most = 0
        entered, release = threading.Event(), threading.Event()

        def join(self, timeout=None):
            Proc.inside += 1
            Proc.most = max(Proc.most, Proc.inside)
            Proc.entered.set()
            Proc.release.wait(5.0)
            Proc.inside -= 1

        def is_alive(self):
            return False

    class Conn:
        def send(self, msg):
            pass
    core = object.__new__(EngineCoreProcess)
    core.proc, core.conn, core._reaping = Proc(), Conn(), threading.Lock()
    reader = threading.Thread(target=core.join, args=(1.0,))
    reader.start()
    assert Proc.entered.wait(5.0)
    stopper = threading.Thread(target=core.stop, args=(10.0,))
    stopper.start()
    stopper.join(0.5)  # stop() must wait for the reader's join, not run beside it
    Proc.release.set()
    reader.join(5.0)
    stopper.join(5.0)
    assert Proc.most == 1 and not reader.is_alive() and not stopper.is_alive()
