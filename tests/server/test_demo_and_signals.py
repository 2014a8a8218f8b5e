"""The README's `make demo` and a user's Ctrl-C, as a new user meets them."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "scripts", "serve_demo.sh")
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="the demo uses curl")


def run_demo(tmp_path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "BIN": os.path.dirname(sys.executable), **env}
    return subprocess.run(["bash", DEMO], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)


@needs_curl
def test_demo_refuses_a_port_another_process_holds(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        out = run_demo(tmp_path, PORT=str(busy.getsockname()[1]))
    assert out.returncode != 0
    assert "already in use" in out.stderr and "server stopped cleanly" not in out.stdout


@pytest.mark.slow  # starts a server
@needs_curl
def test_demo_moves_off_a_taken_default_port(tmp_path):
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8000))
        holder.listen()
    except OSError:
        holder.close()  # something else holds 8000 already: the same situation
    try:
        out = run_demo(tmp_path, PORT="")
    finally:
        holder.close()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "port 8000 is in use; using " in out.stdout
    assert "Once upon a time, there was a little girl named Lily" in out.stdout
    assert "server stopped cleanly" in out.stdout


@pytest.mark.slow  # one more server process
def test_second_signal_during_a_drain_exits_130_quietly(start_server):
    srv = start_server(["--shutdown-timeout", "120"],
                       env={"PAGEDSERVE_TEST_STEP_DELAY": "0.05"})
    body = {"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)  # the request is in flight
        srv.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 60
        while httpx.get(srv.url + "/health", timeout=5).status_code != 503:  # draining
            assert time.monotonic() < deadline, "the first signal did not start a drain"
            time.sleep(0.05)
        srv.proc.send_signal(signal.SIGINT)
        try:
            list(lines)
        except httpx.HTTPError:
            pass  # cut off mid-stream, as asked
    assert srv.wait_exit() == 130  # also asserts the engine core did not outlive it
    log = srv.output()
    assert "Traceback" not in log, log[-3000:]
    assert "stopping now" in log
