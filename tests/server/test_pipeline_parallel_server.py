"""`pagedserve serve --pipeline-parallel-size 2`: the same completions as one rank in-process,
and a dead stage turns /health 503 and ends the server non-zero."""
import os
import signal
import time

import pytest

from pagedserve import LLM, SamplingParams
from tests.engine.test_pipeline_parallel import ENGINE, MODELS, prompts

FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in ENGINE.items()]
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def llama(tiny_model) -> str:
    arch, overrides = MODELS["llama"]
    return tiny_model(arch, **overrides)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pp_server_matches_one_rank_and_fails_fast(start_server, llama):
    srv = start_server([llama, "--pipeline-parallel-size", "2", *FLAGS])
    assert len(srv.workers) == 1  # stage 1 runs in a worker of the engine core
    body = {"model": llama, "prompt": [p["prompt_token_ids"] for p in prompts()],
            "temperature": 0, "max_tokens": GREEDY.max_tokens, "ignore_eos": True}
    response = srv.http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    texts = [c["text"] for c in sorted(response.json()["choices"], key=lambda c: c["index"])]
    expected = LLM(llama, **ENGINE).generate(prompts(), GREEDY, use_tqdm=False)
    assert texts == [o.outputs[0].text for o in expected]
    os.kill(srv.workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while srv.proc.poll() is None and time.monotonic() < deadline:
        try:
            if srv.http.get("/health").status_code == 503:
                break
        except Exception:  # the server may already be going away
            pass
        time.sleep(0.1)
    assert srv.wait_exit() == 1
    assert "rank 1 (pipeline stage 1, tensor-parallel rank 0) died" in srv.output()
