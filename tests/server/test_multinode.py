"""Two "nodes" on localhost: `pagedserve serve --nnodes 2 --node-rank 0` (the leader, HTTP) and
`--node-rank 1` (headless: its workers only), one pipeline stage each, serve the tokens one
process serves; killing the headless node fails the leader fast and leaves no process."""
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from pagedserve import LLM, SamplingParams
from tests.engine.test_pipeline_parallel import ENGINE, MODELS, prompts
from tests.support import alive, children, free_port

FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in ENGINE.items()]
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def llama(tiny_model) -> str:
    arch, overrides = MODELS["llama"]
    return tiny_model(arch, **overrides)


def node_flags(rank: int, port: int) -> list[str]:
    return ["--pipeline-parallel-size", "2", "--nnodes", "2", "--node-rank", str(rank),
            "--master-addr", "127.0.0.1", "--master-port", str(port), *FLAGS]


def start_headless(model: str, port: int, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pagedserve", "serve", model,
                             *node_flags(1, port)], stdout=log, stderr=subprocess.STDOUT)


def ranks_of(pid: int) -> list[int]:
    """A node's worker processes (forked or spawned), not multiprocessing's helpers."""
    def helper(child: int) -> bool:
        with open(f"/proc/{child}/cmdline", "rb") as f:
            return b"resource_tracker" in f.read()
    return [c for c in children(pid) if not helper(c)]


def healthy(server) -> bool:
    try:
        return server.proc.poll() is None and server.http.get("/health").status_code == 200
    except httpx.TransportError:
        return False  # going away


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_nodes_serve_one_process_tokens_and_fail_together(start_server, llama, tmp_path):
    port = free_port()
    leader = start_server([llama, *node_flags(0, port)], wait=False)
    with open(tmp_path / "headless.log", "wb") as log:
        headless = start_headless(llama, port, log)
    try:
        leader.wait_healthy(180)
        workers = ranks_of(headless.pid)
        assert len(workers) == 1  # the headless node runs its rank and serves no HTTP
        body = {"model": llama, "prompt": [p["prompt_token_ids"] for p in prompts()],
                "temperature": 0, "max_tokens": GREEDY.max_tokens, "ignore_eos": True}
        response = leader.http.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text
        texts = [c["text"] for c in sorted(response.json()["choices"], key=lambda c: c["index"])]
        expected = LLM(llama, **ENGINE).generate(prompts(), GREEDY, use_tqdm=False)
        assert texts == [o.outputs[0].text for o in expected]

        os.kill(headless.pid, signal.SIGKILL)
        killed = time.monotonic()
        while healthy(leader):
            assert time.monotonic() - killed < 5, "the leader still healthy 5 s after"
            time.sleep(0.05)
        assert leader.wait_exit() == 1  # and the leader's engine core is gone too
        assert "rank 1 (pipeline stage 1, tensor-parallel rank 0) died" in leader.output()
        deadline = time.monotonic() + 10
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(alive, workers)), "the headless node's rank outlived it"
    finally:
        if headless.poll() is None:
            headless.kill()
        headless.wait()


def test_node_flags_are_checked(llama):
    with pytest.raises(ValueError, match=r"node_rank must be in \[0, nnodes=2\), got 2"):
        LLM(llama, pipeline_parallel_size=2, nnodes=2, node_rank=2, master_port=1)
    with pytest.raises(ValueError, match=r"3 ranks do not split over nnodes=2"):
        LLM(llama, pipeline_parallel_size=3, nnodes=2, master_port=1)
    with pytest.raises(ValueError, match=r"nnodes=2 needs master_port"):
        LLM(llama, pipeline_parallel_size=2, nnodes=2)
    with pytest.raises(ValueError, match=r"node_rank=1 runs only workers, headless"):
        LLM(llama, pipeline_parallel_size=2, nnodes=2, node_rank=1, master_port=1)
