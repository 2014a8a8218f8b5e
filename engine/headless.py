"""A headless node (node_rank > 0): this node's worker ranks and nothing else.

It serves no HTTP and schedules nothing: its workers connect to rank 0 on the leader node
(engine/multinode.py) and run the steps it sends. It lives as long as they do; when one dies
the others are stopped and the node exits non-zero, so the whole group (say, a Kubernetes
LeaderWorkerSet) is restarted together, and rank 0 fails fast on the lost connection.
"""
import logging
import signal
import sys
from multiprocessing.connection import wait

import torch.multiprocessing as mp

from pagedserve.engine.config import EngineConfig
from pagedserve.engine.cpu_threads import usable_cpus
from pagedserve.engine.model_runner import resolve_device
from pagedserve.engine.multiproc import worker_start_method
from pagedserve.engine.worker import run_remote_worker

STOP_GRACE_S = 5.0
logger = logging.getLogger(__name__)


def run_headless(config: EngineConfig) -> int:
    """Run this node's ranks until they end; the exit code for the process."""
    local = config.local_world_size
    first = config.node_rank * local
    threads = max(1, usable_cpus() // local) if resolve_device(config.device).type == "cpu" else 0
    ctx = mp.get_context(worker_start_method())
    procs = [ctx.Process(target=run_remote_worker, args=(rank, config, threads), daemon=True,
                         name=f"pagedserve-rank{rank}") for rank in range(first, first + local)]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for proc in procs:
            proc.start()
        logger.info("node %d of %d: ranks %d..%d of %d, rank 0 at %s:%s", config.node_rank,
                    config.nnodes, first, first + local - 1, config.world_size,
                    config.master_addr, config.master_port)
        return _wait(procs, first)
    finally:
        _stop(procs)


def _wait(procs: list[mp.Process], first: int) -> int:
    """Until every rank has ended; the first failure stops the rest at once."""
    running = list(procs)
    while running:
        wait([p.sentinel for p in running])
        for proc in [p for p in running if not p.is_alive()]:
            proc.join()
            running.remove(proc)
            if proc.exitcode != 0:
                logger.error("rank %d exited with %s; stopping this node", first +
                             procs.index(proc), proc.exitcode)
                return 1
    return 0


def _stop(procs: list[mp.Process]) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in [p for p in procs if p.pid is not None]:
        proc.join(STOP_GRACE_S)
        if proc.is_alive():
            proc.kill()
            proc.join()
