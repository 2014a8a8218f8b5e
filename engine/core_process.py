"""The engine core in its own process, so a server's HTTP work and the engine's Python (scheduler,
sampler, detokenizer) run on two cores instead of sharing one GIL (vLLM V1's split).

The core owns an LLMEngine. Over one pipe it receives batches of commands (add requests, abort
ids, shut down) and answers each step with a CoreOutputs: the step's outputs plus a snapshot
of the engine's counters for /metrics. It exits when told to, when the frontend's end of the
pipe closes (the frontend died: no orphans), or after sending the error a step raised.
"""
import atexit
import logging
import multiprocessing as mp
import os
import signal
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from pagedserve.engine.config import EngineConfig
from pagedserve.engine.llm_engine import EngineStats
from pagedserve.engine.outputs import RequestOutput
from pagedserve.engine.processor import EngineCoreRequest

logger = logging.getLogger(__name__)
HEALTH_CHECK_INTERVAL_S = 1.0
STARTUP_POLL_S = 0.5


@dataclass(slots=True)
class CoreCommands:
    """What the frontend sends in one message (aborts apply before adds; a request added and
    aborted within one message is never sent); `shutdown` ends the core after the rest."""
    adds: list[EngineCoreRequest] = field(default_factory=list)
    aborts: list[str] = field(default_factory=list)
    shutdown: bool = False


@dataclass(slots=True)
class CoreOutputs:
    """One step's outputs and the engine's counters after it."""
    outputs: list[RequestOutput]
    stats: EngineStats
    num_prompt_tokens: int
    num_generation_tokens: int
    num_seqs_received: int  # sequences added so far, so the frontend knows what is in flight
    num_steps: int


@dataclass(slots=True)
class CoreFailed:
    """Sent instead of outputs when loading or a step failed; the core then exits 1."""
    error: BaseException


def _snapshot(engine, outputs: list[RequestOutput], received: int, steps: int) -> CoreOutputs:
    return CoreOutputs(outputs, engine.stats(), engine.num_prompt_tokens,
                       engine.num_generation_tokens, received, steps)


def _send_error(conn: Connection, error: BaseException) -> None:
    try:
        conn.send(CoreFailed(error))
    except Exception:  # unpicklable exception (or pipe gone): its repr still tells the story
        try:
            conn.send(CoreFailed(RuntimeError(repr(error))))
        except OSError:
            pass


def _leave_a_core_to_the_frontend(config: EngineConfig) -> None:
    """On a CPU device torch would use every usable core, and the frontend process (HTTP,
    streaming) would have to take CPU from its threads. An explicit OMP_NUM_THREADS wins."""
    import torch

    from pagedserve.engine.cpu_threads import usable_cpus
    from pagedserve.engine.model_runner import resolve_device
    cores = usable_cpus()
    if (not os.environ.get("OMP_NUM_THREADS") and cores > 1
            and resolve_device(config.device).type == "cpu"):
        torch.set_num_threads(cores - 1)


def run_engine_core(config: EngineConfig, conn: Connection) -> None:
    """The core process's main function."""
    # Ctrl-C reaches the whole process group; the frontend decides when the core stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _leave_a_core_to_the_frontend(config)
    from pagedserve.engine.llm_engine import LLMEngine
    try:
        engine = LLMEngine(config)
    except BaseException as e:
        _send_error(conn, e)
        raise SystemExit(1)
    try:
        conn.send(engine.config)  # ready; the settled config (num blocks, max_model_len)
        code = _loop(engine, conn)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        code = 0  # the frontend is gone: stop, and take the TP workers with us
    except BaseException as e:
        logger.exception("engine core failed")
        _send_error(conn, e)
        code = 1
    finally:
        engine.shutdown()
    raise SystemExit(code)


def _loop(engine, conn: Connection) -> int:
    received = steps = 0
    while True:
        if not engine.has_unfinished_requests():
            # idle: block on the pipe, but look at the TP workers every second
            while not conn.poll(HEALTH_CHECK_INTERVAL_S):
                engine.check_health()
        while conn.poll():
            cmds: CoreCommands = conn.recv()
            for rid in cmds.aborts:  # first: a finished id may be reused by a new request
                engine.abort_request(rid)
            for req in cmds.adds:
                received += req.params.n
                engine.add_parent(engine.processor.make_parent(req))
            if cmds.shutdown:
                return 0
        if engine.has_unfinished_requests():
            outputs = engine.step()
            steps += 1
            conn.send(_snapshot(engine, outputs, received, steps))
        else:
            conn.send(_snapshot(engine, [], received, steps))  # aborts freed blocks: say so


class EngineCoreProcess:
    """The frontend's handle on a core process: start it, send commands, receive outputs."""

    def __init__(self, config: EngineConfig) -> None:
        ctx = mp.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        # not a daemon: with tensor_parallel_size > 1 the core starts its own worker processes
        self.proc = ctx.Process(target=run_engine_core, args=(config, theirs),
                                name="pagedserve-engine-core", daemon=False)
        self.proc.start()
        theirs.close()  # so the core's death reads as EOF here
        self.config = config
        # before multiprocessing's own exit hook, which would wait for the core forever
        atexit.register(self.stop, 5.0)

    def wait_ready(self) -> None:
        """Block until the model is loaded; a failure to load raises here (as in-process)."""
        try:
            msg = self.conn.recv()
        except EOFError:
            self.proc.join()
            raise RuntimeError(f"the engine core process exited while loading "
                               f"({self.describe_exit()})") from None
        if isinstance(msg, CoreFailed):
            self.proc.join()
            raise msg.error
        self.config = msg

    @property
    def pid(self) -> int:
        return self.proc.pid

    def describe_exit(self) -> str:
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
        self.proc.join(timeout)
        if self.proc.is_alive():
            logger.warning("the engine core did not stop in %.0f s; killing it", timeout)
            self.proc.kill()
            self.proc.join()
