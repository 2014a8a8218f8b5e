"""`pagedserve bench serve`: latency arithmetic from known timestamps, and a run against a real
`pagedserve serve` on localhost."""
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from pagedserve.benchmarks.serve import RequestResult, summarize_results
from pagedserve.benchmarks.workload import random_requests
from pagedserve.cli import main


def test_summary_from_known_timestamps():
    a = RequestResult(prompt_len=10, output_len=3, ttft=0.1, e2e=0.5, chunk_times=[0.1, 0.3, 0.5])
    b = RequestResult(prompt_len=20, output_len=5, ttft=0.2, e2e=0.6,
                      chunk_times=[0.2, 0.3, 0.4, 0.5, 0.6])
    failed = RequestResult(prompt_len=7, error="HTTP 503: busy")
    s = summarize_results([a, b, failed], duration_s=2.0)
    assert (s["completed"], s["failed"], s["errors"]) == (2, 1, ["HTTP 503: busy"])
    assert s["requests_per_s"] == pytest.approx(1.0)
    assert s["output_tokens_per_s"] == pytest.approx(4.0)  # 8 tokens in 2 s
    assert s["total_tokens_per_s"] == pytest.approx(19.0)  # (30 + 8) / 2
    assert s["ttft_ms"]["mean"] == pytest.approx(150.0)
    # TPOT: a (0.5 - 0.1) / 2 = 200 ms, b (0.6 - 0.2) / 4 = 100 ms
    assert s["tpot_ms"]["mean"] == pytest.approx(150.0)
    # ITL: two gaps of 200 ms, four of 100 ms
    assert s["itl_ms"]["mean"] == pytest.approx(800 / 6)
    assert s["itl_ms"]["median"] == pytest.approx(100.0)
    assert s["e2e_ms"]["p99"] == pytest.approx(500 + 0.99 * 100)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pagedserve.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--uvicorn-log-level", "warning"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "server exited during start-up"
            time.sleep(0.5)
        else:
            pytest.fail("server did not become healthy")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_bench_against_a_running_server(server_url, tmp_path, capsys):
    out = tmp_path / "s.json"
    rc = main(["bench", "serve", "--base-url", server_url, "--num-prompts", "6",
               "--input-len", "4-16", "--output-len", "3-8", "--max-concurrency", "3",
               "--request-rate", "50", "--output-json", str(out)])
    assert rc == 0
    assert "TTFT" in capsys.readouterr().out
    s = json.loads(out.read_text())["results"]
    assert (s["completed"], s["failed"]) == (6, 0)
    asked = random_requests(6, (4, 16), (3, 8), 512, seed=0, exclude_ids=frozenset({0, 1, 2}))
    assert s["output_tokens"] == sum(r.output_len for r in asked)  # as the server reported
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert 0 < s[metric]["median"] <= s[metric]["p99"]
    assert s["ttft_ms"]["mean"] <= s["e2e_ms"]["mean"]


def test_serve_bench_reports_failures(server_url, capsys):
    rc = main(["bench", "serve", "--base-url", server_url, "--model", "no-such-model",
               "--num-prompts", "2", "--input-len", "4", "--output-len", "2"])
    assert rc == 1
    assert "failed" in capsys.readouterr().out


def test_each_round_against_peers_draws_its_own_prompts(monkeypatch):
    # the same prompts again would be served from the previous round's prefix cache
    from pagedserve.benchmarks import serve_peers
    seen = {}
    monkeypatch.setattr(serve_peers, "main",
                        lambda args, path, workloads: seen.setdefault("w", workloads) and 0)
    rc = main(["bench", "serve", "--backend", "pagedserve", "--rounds", "3", "--num-prompts", "5",
               "--input-len", "8-16", "--output-len", "4"])
    assert rc == 0
    workloads = seen["w"]
    assert [len(w) for w in workloads] == [5, 5, 5]
    prompts = [tuple(tuple(r.prompt_token_ids) for r in w) for w in workloads]
    assert len(set(prompts)) == 3
    first = random_requests(5, (8, 16), (4, 4), 512, seed=0, exclude_ids=frozenset({0, 1, 2}))
    assert prompts[0] == tuple(tuple(r.prompt_token_ids) for r in first)



def test_a_base_url_without_a_scheme_is_refused_by_name():
    with pytest.raises(SystemExit, match="--base-url: base URL must be http"):
        main(["bench", "serve", "--base-url", "127.0.0.1:8000", "--model", "x",
              "--num-prompts", "2", "--input-len", "4", "--output-len", "2"])
