"""How tensor-parallel workers start: fork when it is safe, spawn otherwise (vLLM's rule).

Fork lets a script start an engine at import time, without `if __name__ == "__main__":`,
as vLLM users write them: spawned workers re-import the script's __main__ module and would
start engines of their own. Fork is unsafe once the parent holds a CUDA/HIP context, so
then (and off Linux) workers spawn. PAGEDSERVE_WORKER_MULTIPROC_METHOD overrides the choice.

Threads at fork time: only the forking thread survives in the child. The engine forks before
it starts any thread of its own (the failure watcher starts after the workers) and before
torch.distributed exists (no gloo threads yet; the rendezvous store is opened again by each
worker); torch's intra-op pool is resized in the worker (torch.set_num_threads), which makes
OpenMP create the worker's own threads at its first parallel region.
"""
import logging
import os
import sys

import torch

ENV = "PAGEDSERVE_WORKER_MULTIPROC_METHOD"
METHODS = ("fork", "spawn", "forkserver")
logger = logging.getLogger(__name__)


def worker_start_method() -> str:
    """fork, spawn or forkserver, as the environment asks or as is safe here."""
    asked = os.environ.get(ENV, "").strip().lower()
    if asked:
        if asked not in METHODS:
            raise ValueError(f"{ENV}={asked!r} is not one of {', '.join(METHODS)}")
        return asked
    if not sys.platform.startswith("linux"):
        return "spawn"
    if _accelerator_initialized():
        logger.warning("a CUDA/HIP context exists in this process, so tensor-parallel "
                       "workers spawn (they re-import __main__: guard the script with "
                       "`if __name__ == '__main__':`); %s chooses", ENV)
        return "spawn"
    return "fork"


def _accelerator_initialized() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def close_inherited(fds: list[int]) -> None:
    """In a forked worker: close the parent's ends of the worker pipes, so that each pipe
    reads as closed once the engine process is gone (a spawned worker never holds them)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
