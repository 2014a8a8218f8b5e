"""Start and stop the servers a benchmark compares: `pagedserve serve` and llama.cpp's
`llama-server`, each on a free local port, each at the settings its user would choose."""
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(slots=True)
class Server:
    """A running server process and the root URL it answers on."""
    backend: str
    proc: subprocess.Popen
    url: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(server: Server, timeout_s: float = 600) -> Server:
    """Block until GET /health answers 200 (llama-server says 503 while it loads)."""
    import httpx
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.backend} exited with {server.proc.returncode} "
                               "before it became healthy")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{server.backend} did not become healthy in {timeout_s:.0f} s")


def _launch(backend: str, cmd: list[str], port: int, env: dict | None = None) -> Server:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env or dict(os.environ))
    return wait_healthy(Server(backend, proc, f"http://127.0.0.1:{port}"))


def start_pagedserve(model: str, extra_args: list[str] = (), env: dict | None = None) -> Server:
    """`pagedserve serve MODEL` at its defaults (plus extra_args)."""
    port = free_port()
    cmd = [sys.executable, "-m", "pagedserve.cli", "serve", model, "--host", "127.0.0.1",
           "--port", str(port), "--uvicorn-log-level", "warning", *extra_args]
    return _launch("pagedserve", cmd, port, env)


def start_llama_server(model_path: str, slots: int, ctx_per_slot: int) -> Server:
    """llama-server as a throughput-minded user runs it on this machine: one slot per
    concurrent stream, every usable core, continuous batching (its default), no web UI."""
    from pagedserve.benchmarks import llama_cpp
    from pagedserve.engine.cpu_threads import usable_cpus
    gguf = llama_cpp.to_gguf(model_path)
    port = free_port()
    cmd = [str(llama_cpp.bin_dir() / "llama-server"), "-m", str(gguf), "--host", "127.0.0.1",
           "--port", str(port), "-np", str(slots), "-c", str(slots * ctx_per_slot),
           "-t", str(usable_cpus()), "--cont-batching", "--no-webui"]
    return _launch("llama.cpp", cmd, port, llama_cpp.binary_env())
