"""Tensor-parallel worker processes: ranks 1..N-1 of the mp executor.

Rank 0 (in the engine process) drives each worker over a pipe. Every message is raw int64
bytes starting with a command; a step carries its StepInput (engine/step_input.py). The
model's own traffic between ranks goes through torch.distributed collectives.
"""
import gc
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection

import numpy as np
import torch

from pagedserve.engine.config import EngineConfig
from pagedserve.engine.cpu_threads import set_cpu_threads
from pagedserve.engine.distributed import (
    TPGroup,
    all_reduce,
    destroy_group,
    init_group,
    make_store,
    rendezvous_address,
    use_group,
)
from pagedserve.engine.model_runner import ModelRunner, resolve_device
from pagedserve.engine.multinode import connect_to_leader
from pagedserve.engine.multiproc import close_inherited
from pagedserve.engine.pipeline import stage_of
from pagedserve.engine.step_input import StepInput

EXIT, STEP, INIT_KV = 0, 1, 2


def encode_command(kind: int) -> bytes:
    return np.array([kind, 0, 0, 0], dtype=np.int64).tobytes()


def decode(msg: bytes) -> tuple[int, StepInput | None]:
    """(command, the StepInput of a STEP or None)."""
    data = np.frombuffer(msg, dtype=np.int64)
    kind = int(data[0])
    return kind, StepInput.decode(data) if kind == STEP else None


def rank_device(config: EngineConfig, rank: int) -> torch.device:
    """CPU for every rank, or GPU number `rank` (on its node) of the visible ones."""
    device = resolve_device(config.device)
    if device.type == "cuda" and config.world_size > 1:
        device = torch.device("cuda", rank % config.local_world_size)
        torch.cuda.set_device(device)
    return device


def init_kv_cache(runner: ModelRunner) -> int:
    """Every rank sizes its pool, then all take the smallest, so a block id names the same
    slot on every rank (of every pipeline stage). Run by all ranks together."""
    n = torch.tensor([runner.decide_num_blocks()], dtype=torch.long, device=runner.device)
    with use_group(TPGroup(0, runner.config.world_size)):  # the world group, every stage
        all_reduce(n, op=torch.distributed.ReduceOp.MIN)
    runner.allocate_kv_cache(int(n.item()))
    return runner.num_blocks


def make_runner(config: EngineConfig, rank: int) -> ModelRunner:
    """The ModelRunner of global rank `rank`: its stage's layers, its tensor-parallel shard."""
    tp = config.tensor_parallel_size
    stage = stage_of(rank, tp, config.pipeline_parallel_size)
    return ModelRunner(config, rank_device(config, rank), TPGroup(stage.tp_rank, tp), stage)


def join_group(runner: ModelRunner, store, rank: int) -> None:
    """Join the world; the runner's collectives then run in its stage's group."""
    runner.tp = init_group(store, rank, runner.config.world_size, runner.device,
                           runner.config.tensor_parallel_size)


def run_worker(rank: int, config: EngineConfig, host: str, port: int, conn: Connection,
               threads: int, parents_ends: list[int]) -> None:
    """Entry point of a worker: load this rank's shards, join the group, serve steps."""
    # a forked worker inherits the parent's uncollected garbage, such as an earlier engine's
    # gloo process group: collected here, its destructor waited forever on a condition
    # variable whose threads stayed in the parent. What came from the parent is never
    # collected here; what the worker makes is.
    gc.freeze()
    close_inherited(parents_ends)
    _prepare(threads)
    _run(rank, config, conn,
         lambda: make_store(host, port, config.world_size, is_master=False))


def run_remote_worker(rank: int, config: EngineConfig, threads: int) -> None:
    """Entry point of a worker on a node other than rank 0's (engine/headless.py): it finds
    rank 0 through the rendezvous store and takes its commands over TCP."""
    _prepare(threads)
    try:
        host, port = rendezvous_address(config.master_addr, config.master_port)
        store = make_store(host, port, config.world_size, is_master=False)
        conn = connect_to_leader(store, rank)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    _run(rank, config, conn, lambda: store)


def _prepare(threads: int) -> None:
    # Ctrl-C reaches the whole process group; rank 0 alone decides what happens then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    if threads:
        set_cpu_threads(threads)


def _run(rank: int, config: EngineConfig, conn: Connection, store) -> None:
    """Load, report, join the group and serve until told to exit; never returns."""
    try:
        runner = make_runner(config, rank)
        conn.send(("loaded", None))
        join_group(runner, store(), rank)
        _serve(runner, conn)
    except EOFError:
        os._exit(0)  # the engine process is gone; nobody is left to serve
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
        os._exit(1)  # skip cleanup that could wait on peers
    destroy_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # interpreter teardown with torch loaded takes seconds and frees nothing


def _serve(runner: ModelRunner, conn: Connection) -> None:
    while True:
        kind, step = decode(conn.recv_bytes())
        if kind == EXIT:
            return
        if kind == STEP:
            runner.execute(step)
        elif kind == INIT_KV:
            init_kv_cache(runner)
        else:
            raise ValueError(f"unknown command {kind}")


def _exit_with_parent() -> None:
    """Leave when the engine process dies, even in the middle of a collective."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
