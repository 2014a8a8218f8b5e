"""Tensor-parallel group state and the few collectives the layers need.

The group is a ContextVar that each ModelRunner activates while it builds and runs its model,
so a one-rank engine keeps working in a process that also hosts rank 0 of a TP engine, and
layers never guess from global torch.distributed state.
"""
import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Bounds a collective only when a rank is alive but stuck; a rank that dies is noticed at
# once (gloo sees the closed connection; the executor watches the worker processes).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=5)


@dataclass(slots=True, frozen=True)
class TPGroup:
    """This process's place in its tensor-parallel group (size 1: no collectives at all)."""
    rank: int = 0
    size: int = 1
    # the stage's own group under pipeline parallelism; None: the whole world
    group: dist.ProcessGroup | None = None


_group: ContextVar[TPGroup] = ContextVar("tp_group", default=TPGroup())  # noqa: B039 (never mutated)


@contextmanager
def use_group(group: TPGroup) -> Iterator[None]:
    token = _group.set(group)
    try:
        yield
    finally:
        _group.reset(token)


def tp_rank() -> int:
    return _group.get().rank


def tp_size() -> int:
    return _group.get().size


def all_reduce(x: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if tp_size() > 1:
        dist.all_reduce(x, op=op, group=_group.get().group)
    return x


def gather_to_first(x: torch.Tensor, dim: int = -1) -> torch.Tensor | None:
    """Concatenate every rank's shard of x along dim on rank 0; other ranks get None."""
    if tp_size() == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(tp_size())] if tp_rank() == 0 else None
    dist.gather(x, parts, group=_group.get().group, group_dst=0)
    return torch.cat(parts, dim=dim) if parts is not None else None


def rendezvous_address(addr: str | None = None, port: int | None = None) -> tuple[str, int]:
    """The given address (--master-addr/--master-port), else MASTER_ADDR/MASTER_PORT when set,
    else localhost and port 0 (the store picks a free port), so two engines on one node never
    collide."""
    return (addr or os.environ.get("MASTER_ADDR", "127.0.0.1"),
            port if port is not None else int(os.environ.get("MASTER_PORT", "0")))


def make_store(host: str, port: int, world_size: int, is_master: bool) -> dist.TCPStore:
    return dist.TCPStore(host, port, world_size, is_master, timeout=COLLECTIVE_TIMEOUT,
                         wait_for_workers=False)


def check_no_group() -> None:
    """torch.distributed allows one group per process, so one live TP engine per process."""
    if dist.is_initialized():
        raise RuntimeError("this process already runs rank 0 of a tensor-parallel engine; "
                           "shut that engine down before starting another")


def init_group(store: dist.Store, rank: int, size: int, device: torch.device,
               tp_size: int | None = None) -> TPGroup:
    """Join the process group of all `size` ranks (gloo on CPU, nccl on CUDA, RCCL on ROCm
    builds); returns this rank's tensor-parallel group: the world, or under pipeline
    parallelism its stage's `tp_size` ranks (every rank creates every stage's group)."""
    check_no_group()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=size,
                            timeout=COLLECTIVE_TIMEOUT)
    tp_size = tp_size or size
    if tp_size == size:
        return TPGroup(rank, size)
    mine = None
    for start in range(0, size, tp_size):
        group = dist.new_group(list(range(start, start + tp_size)), timeout=COLLECTIVE_TIMEOUT)
        if start <= rank < start + tp_size:
            mine = group
    return TPGroup(rank % tp_size, tp_size, mine)


def destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def abort_group() -> None:
    """Unblock a collective stuck on a dead peer (NCCL waits for it otherwise)."""
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if abort is not None and dist.is_initialized() and dist.get_backend() == "nccl":
        abort()
