"""Core clients: the frontend's link to an engine core, in this process or in its own.

Both take batches of commands (`send`) and hand every message of the core (CoreOutputs, or
CoreFailed once) to a callback on the frontend's event loop; the core runs engine/core.py's
loop in both. `MPClient` runs it in an engine core process (HTTP and engine Python use two
cores), reading the pipe on a thread so the event loop never blocks on it. `InprocClient`
runs it on a thread of this process (for debugging, embedding, and tests that reach into the
engine as `client.engine`).
"""
import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from pagedserve.engine.config import EngineConfig
from pagedserve.engine.core import CoreCommands, CoreFailed, CoreOutputs, run_core
from pagedserve.engine.core_process import EngineCoreProcess
from pagedserve.engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)
OnMessage = Callable[[CoreOutputs | CoreFailed], None]
_NOTHING = object()


class EngineCoreClient(Protocol):
    def wait_ready(self) -> None:
        """Block until the core has loaded the model; a failure to load raises here."""

    def start(self, on_message: OnMessage) -> None:
        """From now on, call on_message with each message of the core, on this event loop."""

    def send(self, cmds: CoreCommands) -> None:
        """Hand the core a batch of commands (dropped if the core is gone)."""

    def close(self, timeout: float = 10.0) -> None:
        """Stop the core and release it, waiting up to `timeout` s for it to stop (blocking;
        the core's requests end with it)."""


def _on_loop(on_message: OnMessage) -> Callable[[CoreOutputs | CoreFailed], None]:
    loop = asyncio.get_running_loop()

    def deliver(msg: CoreOutputs | CoreFailed) -> None:
        try:
            loop.call_soon_threadsafe(on_message, msg)
        except RuntimeError:
            pass  # the event loop has closed: nobody is left to tell
    return deliver


class _ThreadChannel:
    """The core's end of an in-process link, with a pipe's poll/recv/send."""

    def __init__(self, inbox: queue.SimpleQueue, deliver: OnMessage) -> None:
        self.inbox, self.send = inbox, deliver
        self._next = _NOTHING

    def poll(self, timeout: float | None = 0.0) -> bool:
        if self._next is _NOTHING:
            try:
                self._next = self.inbox.get(block=timeout != 0, timeout=timeout or None)
            except queue.Empty:
                return False
        return True

    def recv(self) -> CoreCommands:
        self.poll(None)
        cmds, self._next = self._next, _NOTHING
        return cmds


class InprocClient:
    """The core on a thread of this process; the model loads in the constructor."""

    def __init__(self, config: EngineConfig) -> None:
        self.engine = LLMEngine(config)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def wait_ready(self) -> None:
        pass  # loaded by the constructor

    def start(self, on_message: OnMessage) -> None:
        channel = _ThreadChannel(self._inbox, _on_loop(on_message))
        self._thread = threading.Thread(target=self._run, args=(channel,), name="engine-core",
                                        daemon=True)
        self._thread.start()

    def _run(self, channel: _ThreadChannel) -> None:
        try:
            run_core(self.engine, channel)
        finally:
            self.engine.shutdown()

    def send(self, cmds: CoreCommands) -> None:
        self._inbox.put(cmds)

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            self.engine.shutdown()
            return
        self._inbox.put(CoreCommands(shutdown=True))
        self._thread.join(timeout)  # a step that never returns must not hold up the exit


class MPClient:
    """The core in an engine core process; the model loads there while this process goes on."""

    def __init__(self, config: EngineConfig) -> None:
        self.core = EngineCoreProcess(config)
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.core.pid

    def wait_ready(self) -> None:
        self.core.wait_ready()

    def start(self, on_message: OnMessage) -> None:
        self._reader = threading.Thread(target=self._read, args=(_on_loop(on_message),),
                                        name="engine-core-reader", daemon=True)
        self._reader.start()

    def _read(self, deliver: OnMessage) -> None:
        """Reader thread: every message from the core goes to the event loop, in order."""
        try:
            while True:
                msg = self.core.recv()
                deliver(msg)
                if isinstance(msg, CoreFailed):
                    return
        except (EOFError, OSError):
            self.core.join(1.0)
            deliver(CoreFailed(RuntimeError(
                f"the engine core process died ({self.core.describe_exit()})")))

    def send(self, cmds: CoreCommands) -> None:
        try:
            self.core.send(cmds)
        except OSError:
            pass  # the core is gone; the reader reports why

    def close(self, timeout: float = 10.0) -> None:
        self.core.stop(timeout)
        if self._reader is not None:
            self._reader.join(5.0)
        self.core.conn.close()
