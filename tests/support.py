"""Process and port helpers the tests share: is a pid alive, which children does it have, a
free localhost port."""
import os
import socket
import time


def alive(pid: int) -> bool:
    """True while pid runs (a zombie, ended but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 30) -> bool:
    """Wait up to `timeout` seconds for pid to end; True if it did."""
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def children(pid: int) -> list[int]:
    """Child pids of every thread of pid; a thread may end while we read."""
    pids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            pass
    return pids


def spawned_children(pid: int) -> list[int]:
    """Children of pid started by multiprocessing spawn: a server's engine core, a core's
    tensor-parallel workers."""
    found = []
    for child in children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    found.append(child)
        except FileNotFoundError:  # ended meanwhile
            pass
    return found


def free_port() -> int:
    """A localhost port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
