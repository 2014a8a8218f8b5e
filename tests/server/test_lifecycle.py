"""Process lifecycle as Kubernetes sees it: loading, SIGTERM drain, engine death."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LONG = {"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True, "stream": True}


def wait_for(predicate, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return None


def events(lines) -> list[dict | str]:
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.mark.parametrize("engine_args", [[], ["--disable-frontend-multiprocessing"]],
                         ids=["core-process", "in-process"])
def test_sigterm_drains_in_flight_then_exits_0(start_server, engine_args):
    srv = start_server(["--shutdown-timeout", "60", *engine_args])
    assert (srv.core is None) == bool(engine_args)  # the flag keeps the engine in the server
    body = {**LONG, "max_tokens": 30}
    with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        first = events([next(lines)])
        with srv.paused():  # the request stays in flight while we look
            srv.proc.send_signal(signal.SIGTERM)
            assert wait_for(lambda: status(srv.url + "/health") == 503)
            refused = httpx.post(srv.url + "/v1/completions", json={"prompt": "Hi"})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "shutting_down"
            assert srv.proc.poll() is None
        rest = events(lines)
    assert rest[-1] == "[DONE]"
    chunks = first + rest[:-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert srv.wait_exit() == 0


@pytest.mark.slow  # one more server process; the timeout logic itself is tested in-process
def test_shutdown_timeout_cuts_off_and_exits_0(start_server):
    srv = start_server(["--shutdown-timeout", "1"], env={"PAGEDSERVE_TEST_STEP_DELAY": "0.05"})
    got: list = []
    with httpx.stream("POST", srv.url + "/v1/completions", json=LONG, timeout=60) as r:
        lines = r.iter_lines()
        got.append(next(lines))
        srv.proc.send_signal(signal.SIGTERM)
        try:
            got.extend(lines)
        except httpx.HTTPError:
            pass  # the connection was closed mid-stream
    assert "data: [DONE]" not in got  # 400 tokens at 50 ms a step outlast the 1 s timeout
    assert srv.wait_exit() == 0


def test_loading_readme_request_then_engine_death(start_server, tmp_path):
    gate = tmp_path / "loaded"
    srv = start_server([], env={"PAGEDSERVE_TEST_LOAD_GATE": str(gate)}, wait=False)
    assert wait_for(lambda: status(srv.url + "/health") is not None, 120), srv.output()
    assert status(srv.url + "/health") == 503  # up, but the model is still loading
    assert status(srv.url + "/v1/models") == 503
    gate.touch()
    srv.wait_healthy()
    # the README's curl, as written (this server has no API key)
    readme = httpx.post(srv.url + "/v1/completions", headers={"Content-Type": "application/json"},
                        content=b'{"model": "stories260K", "prompt": "Once upon a time", '
                                b'"max_tokens": 40, "temperature": 0}', timeout=60)
    assert readme.status_code == 200 and "Lily" in readme.json()["choices"][0]["text"]

    with httpx.stream("POST", srv.url + "/v1/completions", json=LONG, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        with srv.paused():
            plain: dict = {}
            worker = threading.Thread(target=lambda: plain.update(r=httpx.post(
                srv.url + "/v1/completions", json={**LONG, "stream": False}, timeout=60)))
            worker.start()
            assert srv.wait_metric("pagedserve:num_requests_waiting", lambda v: v == 1) == 1
            srv.fail_file.touch()  # the next step raises
        streamed = events(lines)
    worker.join(timeout=60)
    assert plain["r"].status_code == 500
    assert plain["r"].json()["error"]["code"] == "engine_dead"
    assert streamed[-1] == "[DONE]" and "injected" in streamed[-2]["error"]["message"]
    assert streamed[-2]["error"]["code"] == "engine_dead"
    assert srv.wait_exit() == 1  # so Kubernetes restarts the pod
    log = srv.output()
    assert "Traceback" in log and "RuntimeError: injected engine failure" in log


def test_killed_engine_core_fails_requests_and_exits_1(start_server):
    srv = start_server([])
    assert srv.core is not None and srv.workers == []
    with srv.http.stream("POST", "/v1/completions", json=LONG) as r:
        lines = r.iter_lines()
        next(lines)
        os.kill(srv.core, signal.SIGKILL)
        streamed = events(lines)
    assert streamed[-1] == "[DONE]" and streamed[-2]["error"]["code"] == "engine_dead"
    assert "engine core process died (killed by signal 9)" in streamed[-2]["error"]["message"]
    assert srv.wait_exit() == 1  # so Kubernetes restarts the pod


@pytest.mark.slow  # spawns a tensor-parallel worker process
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker through /proc")
def test_tensor_parallel_worker_death_fails_requests_and_exits_1(start_server):
    srv = start_server(["--tensor-parallel-size", "2", "--distributed-executor-backend", "mp"])
    ok = srv.client().completions.create(model="stories260K", prompt="Once upon a time",
                                         max_tokens=12, temperature=0)
    assert "little girl" in ok.choices[0].text  # the same greedy text as one rank
    with srv.http.stream("POST", "/v1/completions", json=LONG) as r:
        lines = r.iter_lines()
        next(lines)
        assert srv.core is not None and len(srv.workers) == 1  # the core started one rank
        os.kill(srv.workers[0], signal.SIGKILL)
        streamed = events(lines)
    assert streamed[-1] == "[DONE]" and streamed[-2]["error"]["code"] == "engine_dead"
    assert "rank 1" in streamed[-2]["error"]["message"]
    assert srv.wait_exit() == 1


@pytest.mark.slow  # one more server process
@pytest.mark.skipif(shutil.which("curl") is None, reason="the demo script uses curl")
def test_make_demo_script(tmp_path, unused_port):
    env = {**os.environ, "BIN": os.path.dirname(sys.executable), "PORT": str(unused_port)}
    out = subprocess.run(["bash", os.path.join(REPO, "scripts", "serve_demo.sh")], env=env,
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Once upon a time, there was a little girl named Lily" in out.stdout
    assert "server stopped cleanly" in out.stdout
