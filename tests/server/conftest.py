"""Real `pagedserve serve` processes on free localhost ports, and helpers to talk to them."""
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

LAUNCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch.py")
# small KV pool: every test server fits in memory next to the others
BASE_ARGS = ["--host", "127.0.0.1", "--kv-cache-memory", "8MiB", "--uvicorn-log-level", "warning"]
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process; `url` is its base URL. Output goes to `log` for failure messages."""

    def __init__(self, tmp_path, args: list[str], env: dict | None = None,
                 wait: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"server-{self.port}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, LAUNCH, *BASE_ARGS, "--port", str(self.port), *args],
                stdout=out, stderr=subprocess.STDOUT, env=full_env)
        if wait:
            self.wait_healthy()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not healthy after {timeout} s:\n{self.output()}")

    def client(self, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("api_key", "unused")
        return openai.OpenAI(base_url=self.url + "/v1", max_retries=0, timeout=60, **kwargs)

    def metrics(self) -> dict[tuple, float]:
        """{(sample name, frozenset of labels other than model_name): value}"""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = frozenset((k, v) for k, v in s.labels.items() if k != "model_name")
                out[(s.name, labels)] = s.value
        return out

    def metric(self, name: str, **labels) -> float:
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def wait_metric(self, name: str, ok, timeout: float = 30, **labels) -> float:
        """Poll until ok(value); returns the last value (the caller asserts on it)."""
        deadline = time.monotonic() + timeout
        value = self.metric(name, **labels)
        while not ok(value) and time.monotonic() < deadline:
            time.sleep(0.05)
            value = self.metric(name, **labels)
        return value

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The bundled model with default serving flags (no API key, no chat template)."""
    srv = Server(tmp_path_factory.mktemp("server"), ["--max-num-seqs", "32"])
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def template_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("template") / "chat.jinja"
    path.write_text(TEMPLATE)
    return str(path)
