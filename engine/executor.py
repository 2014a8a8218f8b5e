"""Executors run a step's inputs through the model on every tensor-parallel rank.

`uni` runs the single rank in-process. `mp` keeps rank 0 in the engine process and starts a
worker process per extra rank (engine/worker.py; forked or spawned: engine/multiproc.py).
Rank 0 alone receives logits and samples.
"""
import atexit
import contextlib
import sys
import threading
import time
from multiprocessing.connection import wait

import torch
import torch.multiprocessing as mp

from pagedserve.engine.config import EngineConfig
from pagedserve.engine.cpu_threads import (
    ThreadGovernor,
    limit_torch_threads,
    reset_cpu_threads,
    set_cpu_threads,
    usable_cpus,
)
from pagedserve.engine.distributed import (
    abort_group,
    check_no_group,
    destroy_group,
    make_store,
    rendezvous_address,
)
from pagedserve.engine.model_runner import ModelRunner, resolve_device
from pagedserve.engine.multinode import ControlServer, RemoteRank
from pagedserve.engine.multiproc import worker_start_method
from pagedserve.engine.step_input import StepInput
from pagedserve.engine.worker import (
    EXIT,
    INIT_KV,
    STEP,
    encode_command,
    init_kv_cache,
    join_group,
    make_runner,
    run_worker,
)

NODE_JOIN_TIMEOUT_S = 300.0  # other nodes' pods may start (pull images) later than ours
FAILURE_GRACE_S = 3.0  # after a failed collective, how long to wait for a worker to be seen dead
SHUTDOWN_GRACE_S = 5.0


class TensorParallelError(RuntimeError):
    """A tensor-parallel rank died or failed; the engine cannot go on."""


class UniExecutor:
    """One rank, in this process."""

    def __init__(self, config: EngineConfig) -> None:
        device = resolve_device(config.device)
        self.governor, self._threads = None, torch.get_num_threads()
        if device.type == "cpu":
            set_cpu_threads(limit_torch_threads())
            self.governor = ThreadGovernor()
        self.runner = ModelRunner(config, device)

    def init_kv_cache(self) -> int:
        num_blocks = self.runner.decide_num_blocks()
        self.runner.allocate_kv_cache(num_blocks)
        return num_blocks

    def execute(self, step: StepInput) -> torch.Tensor:
        return self.runner.execute(step)

    def check_health(self) -> None:
        pass

    def shutdown(self) -> None:
        # torch's thread count is the process's: the next engine here starts from the same.
        # Not at exit (LLM.__del__), when no engine follows and torch's module may be gone.
        if not sys.is_finalizing():
            reset_cpu_threads(self._threads)


class MPExecutor:
    """Rank 0 in this process, ranks 1..N-1 in worker processes driven over pipes.

    A worker that dies or raises fails the engine: the step in flight (or, when idle, the
    next check_health) raises TensorParallelError naming the rank, and every worker is gone.
    """
    governor: ThreadGovernor | None = None  # each rank's threads are set once, at start

    def __init__(self, config: EngineConfig) -> None:
        self.size = size = config.world_size
        self.tp_size = config.tensor_parallel_size
        self.local_size = local = config.local_world_size
        if resolve_device(config.device).type == "cuda" and torch.cuda.device_count() < local:
            ranks = f"tensor_parallel_size={self.tp_size}" + (
                "" if size == self.tp_size else
                f" x pipeline_parallel_size={config.pipeline_parallel_size}")
            per_node = " per node" if config.nnodes > 1 else ""
            raise ValueError(f"{ranks} needs {local} GPUs{per_node}, but "
                             f"{torch.cuda.device_count()} are visible")
        self.error: str | None = None
        self.procs: list[mp.Process] = []
        self.conns = []
        self._closed = False
        self._lock = threading.Lock()
        self._reasons: dict[int, str] = {}
        self._threads = torch.get_num_threads()
        check_no_group()
        host, port = rendezvous_address(config.master_addr, config.master_port)
        self.store = make_store(host, port, size, is_master=True)
        self.port = self.store.port
        self.control = ControlServer(self.store, host) if config.nnodes > 1 else None
        try:
            self._start(config, host)
        except BaseException:
            self._teardown(grace=0)
            raise
        threading.Thread(target=self._watch, name="tp-watch", daemon=True).start()
        atexit.register(self.shutdown)

    def _start(self, config: EngineConfig, host: str) -> None:
        # on CPU the ranks share the cores: oversubscribing them costs more than TP gains
        threads = 0
        if resolve_device(config.device).type == "cpu":
            threads = max(1, usable_cpus() // self.local_size)
        self.start_method = method = worker_start_method()
        ctx = mp.get_context(method)
        for rank in range(1, self.local_size):
            ours, theirs = ctx.Pipe()
            parents_ends = [c.fileno() for c in (*self.conns, ours)] if method == "fork" else []
            proc = ctx.Process(target=run_worker, name=f"pagedserve-tp-rank{rank}", daemon=True,
                               args=(rank, config, host, self.port, theirs, threads,
                                     parents_ends))
            proc.start()
            theirs.close()  # so a dead worker reads as EOF here
            self.procs.append(proc)
            self.conns.append(ours)
        if self.control is not None:
            self._join_remote()
        if threads:
            set_cpu_threads(threads)
        self.runner = make_runner(config, 0)
        self._wait_loaded()
        join_group(self.runner, self.store, 0)

    def _join_remote(self) -> None:
        """The other nodes' workers (started headless there) connect to us, rank by rank."""
        ranks = list(range(self.local_size, self.size))
        remote = self.control.gather(ranks, self.local_size, NODE_JOIN_TIMEOUT_S)
        for rank in ranks:
            self.procs.append(remote[rank])
            self.conns.append(remote[rank].conn)

    def _wait_loaded(self) -> None:
        """Block until every worker has loaded its shards, failing fast if one cannot."""
        pending = set(range(1, self.size))
        while pending:
            # a remote rank's sentinel is its connection: each object once
            wait(list({*(self.conns[r - 1] for r in pending),
                       *(self.procs[r - 1].sentinel for r in pending)}))
            for rank in sorted(pending):
                if self._reason(rank) == "loaded":
                    pending.discard(rank)
                elif rank in self._reasons or not self.procs[rank - 1].is_alive():
                    hint = "" if rank in self._reasons or self.start_method == "fork" else (
                        ". Workers are spawned and re-import your __main__ module: a script "
                        "that starts the engine at import time needs `if __name__ == "
                        "'__main__':`")
                    raise TensorParallelError(f"tensor-parallel worker rank {rank} failed while "
                                              f"loading the model: {self._reason(rank)}{hint}")

    def _reason(self, rank: int) -> str:
        """What a worker said or how it ended; reads its pipe at most once per message."""
        with self._lock:
            conn = self.conns[rank - 1]
            try:
                if conn.poll():
                    kind, text = conn.recv()
                    if kind != "error":
                        return kind
                    last = text.strip().splitlines()[-1]
                    self._reasons[rank] = f"raised {last}; its traceback:\n{text}"
            except (EOFError, OSError):
                pass
            if rank in self._reasons:
                return self._reasons[rank]
            proc = self.procs[rank - 1]
            if isinstance(proc, RemoteRank):
                return "still running" if proc.is_alive() else proc.describe()
            proc.join(timeout=1.0)  # its sentinel can fire a moment before it can be reaped
            code = proc.exitcode
            return ("still running" if code is None else
                    f"killed by signal {-code}" if code < 0 else f"exited with code {code}")

    def init_kv_cache(self) -> int:
        return self._on_all_ranks(encode_command(INIT_KV), lambda: init_kv_cache(self.runner))

    def execute(self, step: StepInput) -> torch.Tensor:
        step = step.padded()  # once, for the message and for rank 0
        return self._on_all_ranks(step.encode(STEP), lambda: self.runner.execute(step))

    def _on_all_ranks(self, msg: bytes, run_rank0):
        try:
            self.check_health()
            for conn in self.conns:
                conn.send_bytes(msg)
            return run_rank0()
        except BaseException as e:
            error = self._fail(e)
            if isinstance(e, Exception):
                raise error from e
            raise  # KeyboardInterrupt and friends keep their type; the executor is closed

    def _fail(self, cause: BaseException) -> TensorParallelError:
        """Name the rank behind a failed step, then stop every worker: the ranks are out of
        step now and cannot be resynchronised."""
        if self._closed and self.error is None:
            return TensorParallelError("the tensor-parallel executor was shut down")
        deadline = time.monotonic() + FAILURE_GRACE_S
        while self.error is None and time.monotonic() < deadline:
            dead = [r for r, p in enumerate(self.procs, 1) if not p.is_alive()]
            if dead:
                self.error = self._describe(dead[0])
                break
            time.sleep(0.05)
        if self.error is None:
            self.error = f"tensor-parallel rank 0 failed during a step: {cause!r}"
        self._teardown(grace=0)
        return TensorParallelError(self.error)

    def _describe(self, rank: int) -> str:
        where = "" if self.size == self.tp_size else (
            f" (pipeline stage {rank // self.tp_size}, tensor-parallel rank "
            f"{rank % self.tp_size})")
        return f"tensor-parallel worker rank {rank}{where} died ({self._reason(rank)})"

    def _watch(self) -> None:
        sentinels = {p.sentinel: rank for rank, p in enumerate(self.procs, 1)}
        try:
            ready = wait(list(sentinels))
        except (OSError, ValueError):  # a remote rank's connection closed by shutdown
            return
        if self._closed or self.error is not None:
            return
        self.error = self._describe(sentinels[ready[0]])
        abort_group()  # an NCCL collective waiting on the dead rank returns now

    def check_health(self) -> None:
        """Raise TensorParallelError if any rank has died (cheap; safe to call often)."""
        if self.error is None and not self._closed:
            dead = [r for r, p in enumerate(self.procs, 1) if not p.is_alive()]
            if dead:
                self.error = self._describe(dead[0])
        if self.error is not None or self._closed:
            raise TensorParallelError(self.error or "the tensor-parallel executor was shut down")

    def shutdown(self) -> None:
        """Stop the workers, leave the process group and free the rendezvous port."""
        self._teardown(grace=SHUTDOWN_GRACE_S)

    def _teardown(self, grace: float) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.shutdown)
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send_bytes(encode_command(EXIT))
        deadline = time.monotonic() + grace
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()
        if self.control is not None:
            self.control.close()
        destroy_group()
        self.store = self.runner = None
        reset_cpu_threads(self._threads)


def make_executor(config: EngineConfig) -> UniExecutor | MPExecutor:
    """`uni` for one rank; `mp` for more (the backend name was checked by EngineConfig)."""
    if config.node_rank > 0:
        raise ValueError(f"node_rank={config.node_rank} runs only workers, headless: start it "
                         f"with `pagedserve serve MODEL --node-rank {config.node_rank} ...`")
    if config.distributed_executor_backend == "mp" and config.world_size > 1:
        return MPExecutor(config)
    return UniExecutor(config)
