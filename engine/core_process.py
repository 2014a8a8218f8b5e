"""The engine core in its own process, so a server's HTTP work and the engine's Python (scheduler,
sampler, detokenizer) run on two cores instead of sharing one GIL (vLLM V1's split).

The process runs engine/core.py's loop over a pipe. It exits when told to, when the
frontend's end of the pipe closes (the frontend died: no orphans), or after sending the
error a step raised.

On a CPU device the core starts with every usable core, as an offline run does; the thread
governor (cpu_threads.py) then measures whether the last thread pays while the frontend's HTTP
and streaming work shares the cores (on 2 cores it did for a ~20M model, not for stories260K),
and gives one up while another process keeps ours waiting for a CPU. A fixed `cores - 1`
would have cost the ~20M model 35 % (benchmarks/README.md has the numbers).
"""
import atexit
import logging
import multiprocessing as mp
import signal
import threading
from multiprocessing.connection import Connection

from pagedserve.engine.config import EngineConfig
from pagedserve.engine.core import CoreCommands, CoreFailed, CoreOutputs, run_core, send_error

logger = logging.getLogger(__name__)
LOG_FORMAT = "%(levelname)s %(asctime)s %(name)s: %(message)s"


def run_engine_core(config: EngineConfig, conn: Connection, log_level: int) -> None:
    """The core process's main function."""
    # Ctrl-C reaches the whole process group; the frontend decides when the core stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a spawned process starts without the frontend's logging: the core's messages (threads
    # given up, a failed step's traceback) would go nowhere below WARNING
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    from pagedserve.engine.llm_engine import LLMEngine
    try:
        engine = LLMEngine(config)
    except BaseException as e:
        send_error(conn, e)
        raise SystemExit(1) from None
    try:
        code = run_core(engine, conn)
    finally:
        engine.shutdown()
    raise SystemExit(code)


class EngineCoreProcess:
    """The frontend's handle on a core process: start it, send commands, receive outputs."""

    def __init__(self, config: EngineConfig) -> None:
        ctx = mp.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        # not a daemon: with tensor_parallel_size > 1 the core starts its own worker processes
        level = logging.getLogger().getEffectiveLevel()
        self.proc = ctx.Process(target=run_engine_core, args=(config, theirs, level),
                                name="pagedserve-engine-core", daemon=False)
        self.proc.start()
        theirs.close()  # so the core's death reads as EOF here
        # Process.join/exitcode call waitpid: from two threads at once (stop, and the reader
        # seeing EOF) the one that lost the race read the exited core as alive and killed it
        self._reaping = threading.Lock()
        # before multiprocessing's own exit hook, which would wait for the core forever
        atexit.register(self.stop, 5.0)

    def wait_ready(self) -> CoreOutputs:
        """Block until the model is loaded; a failure to load raises here (as in-process)."""
        try:
            msg = self.conn.recv()
        except EOFError:
            self.join()
            raise RuntimeError(f"the engine core process exited while loading "
                               f"({self.describe_exit()})") from None
        if isinstance(msg, CoreFailed):
            self.join()
            raise msg.error
        return msg

    @property
    def pid(self) -> int:
        return self.proc.pid

    def join(self, timeout: float | None = None) -> None:
        """Wait up to `timeout` s for the core to exit; safe from any thread."""
        with self._reaping:
            self.proc.join(timeout)

    def describe_exit(self) -> str:
        with self._reaping:
            code = self.proc.exitcode
        if code is None:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def send(self, cmds: CoreCommands) -> None:
        self.conn.send(cmds)

    def recv(self) -> CoreOutputs | CoreFailed:
        return self.conn.recv()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the core to stop; kill it if it has not within `timeout` seconds. (The pipe
        stays open: a reader blocked on it sees EOF once the core has exited.)"""
        atexit.unregister(self.stop)
        try:
            self.conn.send(CoreCommands(shutdown=True))
        except OSError:
            pass
        with self._reaping:
            self.proc.join(timeout)
            if not self.proc.is_alive():
                return
            logger.warning("the engine core did not stop in %.0f s; killing it", timeout)
            self.proc.kill()
            self.proc.join()
