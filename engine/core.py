"""The engine core's side of the frontend/core split: one loop, wherever the core runs.

The core owns an LLMEngine and talks to its frontend over a channel with a pipe's interface
(`poll`, `recv`, `send`): a multiprocessing pipe when it runs in its own process
(engine/core_process.py), a pair of thread queues when it runs on a thread of the frontend's
process (engine/core_client.py). It receives batches of commands and answers each step with
the step's outputs and the engine's stats after it.
"""
import logging
from dataclasses import dataclass, field
from typing import Protocol

from pagedserve.engine.llm_engine import EngineStats, LLMEngine
from pagedserve.engine.outputs import RequestOutput, pack_outputs, unpack_outputs
from pagedserve.engine.processor import EngineCoreRequest

logger = logging.getLogger(__name__)
# while idle, how often the core looks at its tensor-parallel workers: a worker can die while
# nothing runs, and /health must say so without waiting for a request
HEALTH_CHECK_INTERVAL_S = 1.0


@dataclass(slots=True)
class CoreCommands:
    """What the frontend sends in one message (aborts apply before adds; a request added and
    aborted within one message is never sent); `shutdown` ends the core after the rest."""
    adds: list[EngineCoreRequest] = field(default_factory=list)
    aborts: list[str] = field(default_factory=list)
    shutdown: bool = False


@dataclass(slots=True)
class CoreOutputs:
    """One step's outputs and the engine's stats after it (the first one says: loaded)."""
    outputs: list[RequestOutput]
    stats: EngineStats

    def __reduce__(self):
        # sent every step: the outputs travel as plain tuples (outputs.pack_outputs), without
        # the prompts, which the frontend sent and puts back (async_engine.AsyncLLMEngine)
        return _unpack_core_outputs, (pack_outputs(self.outputs), self.stats)


def _unpack_core_outputs(packed: list[tuple], stats: EngineStats) -> CoreOutputs:
    return CoreOutputs(unpack_outputs(packed), stats)


@dataclass(slots=True)
class CoreFailed:
    """Sent instead of outputs when loading or a step failed; the core then stops."""
    error: BaseException


class Channel(Protocol):
    """The core's end of its link to the frontend (multiprocessing.Connection's methods)."""

    def poll(self, timeout: float | None = 0.0) -> bool: ...

    def recv(self) -> CoreCommands: ...

    def send(self, msg: CoreOutputs | CoreFailed) -> None: ...


def send_error(channel: Channel, error: BaseException) -> None:
    try:
        channel.send(CoreFailed(error))
    except Exception:  # unpicklable exception (or pipe gone): its repr still tells the story
        try:
            channel.send(CoreFailed(RuntimeError(repr(error))))
        except OSError:
            pass


def run_core(engine: LLMEngine, channel: Channel) -> int:
    """Serve the frontend until told to stop (0), until it is gone (0), or until a step
    fails (1, after sending the error)."""
    governor = engine.executor.governor
    if governor is not None:
        governor.share_cores()
    try:
        channel.send(CoreOutputs([], engine.stats()))  # ready
        _busy_loop(engine, channel)
        return 0
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return 0  # the frontend is gone: stop, and take the TP workers with us
    except BaseException as e:
        logger.exception("engine core failed")
        send_error(channel, e)
        return 1


def _busy_loop(engine: LLMEngine, channel: Channel) -> None:
    while True:
        if not engine.has_unfinished_requests():
            while not channel.poll(HEALTH_CHECK_INTERVAL_S):
                engine.check_health()
        while channel.poll():
            cmds = channel.recv()
            if _apply(engine, cmds):
                return
        # with nothing to run, the stats still tell the frontend that aborts freed blocks
        outputs = engine.step() if engine.has_unfinished_requests() else []
        channel.send(CoreOutputs(outputs, engine.stats()))


def _apply(engine: LLMEngine, cmds: CoreCommands) -> bool:
    """Apply one message; True if it says to stop."""
    for rid in cmds.aborts:  # first: a finished id may be reused by a new request
        engine.abort_request(rid)
    for req in cmds.adds:
        engine.add_parent(engine.processor.make_parent(req))
    return cmds.shutdown
