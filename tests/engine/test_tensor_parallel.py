"""Tensor parallelism on CPU (gloo): same greedy tokens as one rank, fail-fast on dead
workers, clean shutdown, clear errors for shapes that do not split."""
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from multiprocessing import resource_tracker

import httpx
import numpy as np
import pytest
import torch

from pagedserve import LLM, SamplingParams
from pagedserve.engine.async_engine import AsyncLLMEngine, EngineDeadError
from pagedserve.engine.config import EngineConfig
from pagedserve.engine.executor import TensorParallelError
from pagedserve.engine.worker import STEP
from tests.support import alive, children, free_port, spawned_children

# Llama: 4 heads, 2 KV heads (tp=2 shards them, tp=4 replicates each on two ranks).
# Qwen2: q/k/v biases, one KV head (replicated on every rank), tied embeddings, and a vocab of
# 510 that tp=4 cannot split evenly (the last rank's shard is padded).
MODELS = {"llama": ("llama", {}),
          "qwen2": ("qwen2", {"num_key_value_heads": 1, "vocab_size": 510,
                              "tie_word_embeddings": True})}
# a small step budget and few sequences: chunked prefills mixed with decodes, queueing
ENGINE = dict(max_num_batched_tokens=32, max_num_seqs=4, block_size=8, max_model_len=128)
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


def prompts() -> list[dict]:
    rng = random.Random(0)
    ids = [[rng.randrange(3, 500) for _ in range(n)] for n in (1, 7, 16, 33, 58)]
    ids.append(ids[3][:20] + [7, 8, 9])  # shares a cached prefix with the 33-token prompt
    return [{"prompt_token_ids": p} for p in ids]


def token_ids(llm: LLM) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(prompts(), GREEDY, use_tqdm=False)]


def workers() -> set[int]:
    """Live child processes of this one, except multiprocessing's resource tracker."""
    return set(children(os.getpid())) - {resource_tracker._resource_tracker._pid}


@pytest.fixture(scope="module")
def model(tiny_model):
    def path(name: str) -> str:
        arch, overrides = MODELS[name]
        return tiny_model(arch, **overrides)
    return path


@pytest.fixture(scope="module")
def reference(model):
    cache: dict[str, list[list[int]]] = {}

    def tokens(name: str) -> list[list[int]]:
        if name not in cache:
            cache[name] = token_ids(LLM(model(name), **ENGINE))
        return cache[name]
    return tokens


@pytest.mark.parametrize("tp", [2, pytest.param(4, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_tokens_match_one_rank(model, reference, name, tp):
    before = workers()
    llm = LLM(model(name), tensor_parallel_size=tp, **ENGINE)
    assert len(workers() - before) == tp - 1
    try:
        assert token_ids(llm) == reference(name)
    finally:
        llm.llm_engine.shutdown()
    assert workers() == before


@pytest.mark.timeout(120)
def test_engines_one_after_another_reuse_the_port(model, reference, monkeypatch):
    """With MASTER_PORT fixed, the second engine can only start if the first freed it."""
    port = free_port()
    monkeypatch.setenv("MASTER_PORT", str(port))
    before = workers()
    first = LLM(model("llama"), tensor_parallel_size=2, **ENGINE)
    assert first.llm_engine.executor.port == port
    # one TP engine per process (torch.distributed has one group), said plainly ...
    with pytest.raises(RuntimeError, match="shut that engine down"):
        LLM(model("llama"), tensor_parallel_size=2, **ENGINE)
    # ... while one-rank engines still work next to it
    assert token_ids(LLM(model("qwen2"), **ENGINE)) == reference("qwen2")
    first.llm_engine.shutdown()
    second = LLM(model("llama"), tensor_parallel_size=2, **ENGINE)
    assert token_ids(second) == reference("llama")
    del second  # the vLLM habit: dropping the LLM shuts its workers down
    assert workers() == before
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@pytest.mark.timeout(120)
def test_killed_worker_fails_the_step_and_names_the_rank(model):
    before = workers()
    llm = LLM(model("llama"), tensor_parallel_size=2, **ENGINE)
    engine = llm.llm_engine
    (pid,) = workers() - before
    for p in prompts():
        engine.add_request(None, p, SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(TensorParallelError, match=r"rank 1 died \(killed by signal 9\)"):
        for _ in range(100):  # the step in flight or the next one must fail, not hang
            engine.step()
    with pytest.raises(TensorParallelError, match="rank 1"):
        llm.generate(prompts(), GREEDY, use_tqdm=False)
    assert workers() == before
    llm.llm_engine.shutdown()


@pytest.mark.timeout(120)
def test_worker_exception_while_idle_kills_the_async_engine(model):
    """A worker that raises is seen without any request in flight, so /health can turn 503."""
    before = workers()

    async def main() -> None:
        config = EngineConfig(model=model("llama"), tensor_parallel_size=2, **ENGINE)
        engine = AsyncLLMEngine.from_config(config, in_process=True)
        try:
            outs = [o async for o in engine.generate(prompts()[2], GREEDY)]
            assert outs[-1].finished and engine.is_running
            # a step message whose body contradicts its header: rank 1 raises ValueError
            bad = np.array([STEP, 5, 1, 1], dtype=np.int64).tobytes()
            engine.client.engine.executor.conns[0].send_bytes(bad)
            while engine.is_running:
                await asyncio.sleep(0.1)
            assert isinstance(engine.dead_error, TensorParallelError)
            assert "rank 1" in str(engine.dead_error)
            assert "ValueError" in str(engine.dead_error)
            with pytest.raises(EngineDeadError):
                async for _ in engine.generate(prompts()[0], GREEDY):
                    pass
        finally:
            await engine.shutdown()
    asyncio.run(main())
    assert workers() == before


def _variant(tmp_path, base: str, **changes) -> str:
    """A model folder whose config.json differs; shape checks fail before weights are read."""
    with open(os.path.join(base, "config.json")) as f:
        config = json.load(f)
    config.update(changes)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    return str(tmp_path)


@pytest.mark.parametrize("changes,tp,message", [
    ({}, 3, r"4 attention heads are not divisible by tensor_parallel_size=3"),
    ({"num_attention_heads": 6, "num_key_value_heads": 3}, 2,
     r"3 KV heads do not split over tensor_parallel_size=2"),
    ({"intermediate_size": 130}, 4, r"intermediate_size 130 is not divisible by "
                                    r"tensor_parallel_size=4"),
])
def test_shapes_that_do_not_split_are_refused(model, tmp_path, changes, tp, message):
    before = workers()
    with pytest.raises(ValueError, match=message):
        LLM(_variant(tmp_path, model("llama"), **changes), tensor_parallel_size=tp)
    assert workers() == before


@pytest.mark.parametrize("kwargs,message", [
    ({"distributed_executor_backend": "ray"}, r"'ray' is not supported; use 'mp'"),
    ({"distributed_executor_backend": "uni", "tensor_parallel_size": 2}, r"needs 'mp'"),
])
def test_backend_errors(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        LLM(model("llama"), **kwargs)


def test_more_ranks_than_visible_gpus(model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    before = workers()
    with pytest.raises(ValueError, match="tensor_parallel_size=2 needs 2 GPUs, but 1 are visible"):
        LLM(model("llama"), tensor_parallel_size=2, device="cuda")
    assert workers() == before


# ---- `pagedserve serve --tensor-parallel-size 2`: a real server process ----

def _wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.1)


class TPServer:
    def __init__(self, tmp_path, model_path: str) -> None:
        self.port = free_port()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        cli = os.path.join(os.path.dirname(sys.executable), "pagedserve")
        cmd = [cli] if os.path.exists(cli) else [sys.executable, "-m", "pagedserve.cli"]
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in ENGINE.items()]
        self.log = tmp_path / f"serve-{self.port}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*cmd, "serve", model_path, "--tensor-parallel-size", "2", "--host", "127.0.0.1",
                 "--port", str(self.port), "--uvicorn-log-level", "warning", *flags],
                stdout=out, stderr=subprocess.STDOUT)
        _wait_until(lambda: self.health() == 200, 180, f"server healthy; log:\n{self.logs()}")
        # the server's child is the engine core process; rank 1 is the core's child
        self.workers = [w for c in spawned_children(self.proc.pid) for w in spawned_children(c)]
        assert len(self.workers) == 1

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def health(self) -> int | None:
        if self.proc.poll() is not None:
            pytest.fail(f"server exited with {self.proc.returncode}; log:\n{self.logs()}")
        try:
            return self.http.get("/health").status_code
        except httpx.TransportError:
            return None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.http.close()


@pytest.fixture
def tp_server(model, tmp_path):
    server = TPServer(tmp_path, model("llama"))
    yield server
    server.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_server_matches_one_rank_and_sigterm_leaves_no_workers(model, tp_server):
    body = {"model": model("llama"), "prompt": [p["prompt_token_ids"] for p in prompts()],
            "temperature": 0, "max_tokens": GREEDY.max_tokens, "ignore_eos": True}
    response = tp_server.http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    texts = [c["text"] for c in sorted(response.json()["choices"], key=lambda c: c["index"])]
    expected = LLM(model("llama"), **ENGINE).generate(prompts(), GREEDY, use_tqdm=False)
    assert texts == [o.outputs[0].text for o in expected]
    tp_server.proc.send_signal(signal.SIGTERM)
    assert tp_server.proc.wait(60) == 0
    _wait_until(lambda: not any(map(alive, tp_server.workers)), 10, "workers gone")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_server_fails_fast_when_a_worker_dies(tp_server):
    """While idle: /health answers 503, then the process exits 1 (its in-flight requests, none
    here, get their errors first); either way Kubernetes restarts the pod."""
    os.kill(tp_server.workers[0], signal.SIGKILL)
    _wait_until(lambda: tp_server.proc.poll() is not None or tp_server.health() == 503, 15,
                "/health 503 after a worker was killed")
    assert tp_server.proc.wait(60) == 1  # exits, so its supervisor restarts the pod
    assert "rank 1" in tp_server.logs()


SCRIPT = """
import sys, time
from pagedserve import LLM
llm = LLM(sys.argv[1], tensor_parallel_size=2)
print(*[p.pid for p in llm.llm_engine.executor.procs], flush=True)
if sys.argv[2] == "wait":
    time.sleep(300)
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("ending", ["exit", "kill"])
def test_engine_process_ending_takes_its_workers(model, ending):
    """A script that exits without shutting down, or is killed outright, leaves no workers."""
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, model("llama"),
                             "wait" if ending == "kill" else "exit"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 1
    if ending == "kill":
        proc.kill()
    proc.wait(60)
    _wait_until(lambda: not any(map(alive, pids)), 10, "workers gone")
