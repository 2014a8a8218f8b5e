"""Real `pagedserve serve` processes on free localhost ports, and helpers to talk to them."""
import contextlib
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import alive, free_port, spawned_children

LAUNCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch.py")
# small KV pool: every test server fits in memory next to the others
BASE_ARGS = ["--host", "127.0.0.1", "--kv-cache-memory", "8MiB", "--uvicorn-log-level", "warning"]
API_KEY = "sk-test-4f1c9a"
MAX_QUEUE_LEN = 12
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


class Server:
    """One server process; `url` is its base URL. Output goes to `log` for failure messages."""

    def __init__(self, tmp_path, args: list[str], env: dict | None = None,
                 wait: bool = True, api_key: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # raw HTTP with the key; `.post("/v1/completions", json=...)`
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=60)
        if api_key:  # as the Kubernetes operator passes it: from a Secret, via the environment
            env = {**(env or {}), "PAGEDSERVE_API_KEY": api_key}
        self.log = tmp_path / f"server-{self.port}.log"
        # seen once healthy: the engine core process (None in-process) and its TP workers
        self.core: int | None = None
        self.workers: list[int] = []
        # test hooks of launch.py: touch these files to pause or break the engine
        self.pause_file = tmp_path / "pause"
        self.fail_file = tmp_path / "fail"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "PAGEDSERVE_TEST_PAUSE_FILE": str(self.pause_file),
                    "PAGEDSERVE_TEST_FAIL_FILE": str(self.fail_file), **(env or {})}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, LAUNCH, *BASE_ARGS, "--port", str(self.port), *args],
                stdout=out, stderr=subprocess.STDOUT, env=full_env)
        if wait:
            self.wait_healthy()

    @contextlib.contextmanager
    def paused(self):
        """Engine steps wait inside this block; requests stay exactly where they are."""
        self.pause_file.touch()
        try:
            yield
        finally:
            self.pause_file.unlink()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    self._find_engine_processes()
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not healthy after {timeout} s:\n{self.output()}")

    def _find_engine_processes(self) -> None:
        children = spawned_children(self.proc.pid)
        assert len(children) <= 1, f"expected at most one engine core, found {children}"
        self.core = children[0] if children else None
        self.workers = spawned_children(self.core) if self.core else []

    def client(self, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("api_key", self.api_key or "unused")
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

    def terminate(self) -> None:
        """SIGTERM without waiting (interpreter teardown takes seconds on a busy machine)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = 60) -> int:
        """The exit code, once the server and every process it started have ended."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        deadline = time.monotonic() + 15
        helpers = [p for p in [self.core, *self.workers] if p is not None]
        while any(map(alive, helpers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in helpers if alive(p)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes outlived the server: {left}\n{self.output()[-3000:]}"
        return code


@pytest.fixture(scope="session")
def template_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("template") / "chat.jinja"
    path.write_text(TEMPLATE)
    return str(path)


@pytest.fixture(scope="session")
def server(start_server, template_file):
    """The bundled model behind an API key, with a chat template, an alias and a queue bound.
    (The bare model's missing chat template is tested in-process.)"""
    srv = start_server(["--max-num-seqs", "32", "--max-queue-len", str(MAX_QUEUE_LEN),
                        "--chat-template", template_file,
                        "--served-model-name", "stories260K", "alias"], api_key=API_KEY)
    srv.max_queue_len = MAX_QUEUE_LEN
    yield srv
    srv.terminate()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """start_server(args, env=None, wait=True) -> Server; whatever is still running at the end
    of the session is stopped."""
    started: list[Server] = []

    def start(args: list[str], env: dict | None = None, wait: bool = True,
              api_key: str | None = None) -> Server:
        srv = Server(tmp_path_factory.mktemp("server"), args, env, wait, api_key)
        started.append(srv)
        return srv
    yield start
    for srv in started:
        srv.terminate()
    for srv in started:
        srv.wait_exit()


@pytest.fixture
def unused_port() -> int:
    return free_port()
