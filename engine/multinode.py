"""Ranks on other nodes: how rank 0 reaches them and sees them die.

Rank 0 drives every worker with the same messages (engine/worker.py); a worker on this node
gets them over a pipe, one on another node over a TCP connection it opens to rank 0. Rank 0
listens on a free port and publishes it, with a random key the connection must prove, in the
torch.distributed rendezvous store, so --master-addr/--master-port is all a node needs.
After loading, a worker speaks only to report an error, so a remote rank counts as alive while
its connection is open and silent: a killed process or node closes it, and rank 0 notices.
"""
import queue
import secrets
import threading
import time
from multiprocessing.connection import Client, Connection, Listener, wait

import torch.distributed as dist

CONTROL_KEY = "pagedserve/control"
AUTH_KEY = "pagedserve/authkey"


class RemoteRank:
    """A worker on another node, with the parts of mp.Process the executor uses."""

    def __init__(self, conn: Connection, rank: int, node: int) -> None:
        self.conn, self.rank, self.node = conn, rank, node
        self.pid = None
        self.exitcode = None
        self._lost = False

    @property
    def sentinel(self) -> Connection:
        return self.conn  # multiprocessing.connection.wait takes connections too

    def is_alive(self) -> bool:
        if self._lost:
            return False
        try:
            self._lost = self.conn.poll()
        except (OSError, EOFError):
            self._lost = True
        return not self._lost

    def join(self, timeout: float | None = None) -> None:
        try:
            wait([self.conn], timeout)
        except (OSError, ValueError):
            pass  # already closed

    def kill(self) -> None:
        """Close our end: the worker reads EOF and exits, its node's process with it."""
        self._lost = True
        self.conn.close()

    def describe(self) -> str:
        return f"its connection from node {self.node} closed: the process or the node is gone"


class ControlServer:
    """Accepts the remote workers' connections; each first says its global rank."""

    def __init__(self, store: dist.Store, advertise: str) -> None:
        self.key = secrets.token_bytes(16)
        self.listener = Listener(("0.0.0.0", 0), authkey=self.key)
        store.set(AUTH_KEY, self.key.hex())
        store.set(CONTROL_KEY, f"{advertise}:{self.listener.address[1]}")
        self._arrived: queue.Queue = queue.Queue()
        threading.Thread(target=self._accept, name="control-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
                kind, rank = conn.recv()
            except OSError:
                return  # closed
            except Exception:  # a stranger, or a wrong key: not one of ours
                continue
            if kind == "hello":
                self._arrived.put((int(rank), conn))

    def gather(self, ranks: list[int], local_size: int, timeout: float) -> dict[int, RemoteRank]:
        """The connections of `ranks`, waiting up to `timeout` seconds for them all."""
        found: dict[int, RemoteRank] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(ranks):
            try:
                rank, conn = self._arrived.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                missing = sorted({r // local_size for r in ranks if r not in found})
                raise TimeoutError(f"node(s) {missing} did not join within {timeout:.0f} s "
                                   f"(started with the same --nnodes and --master-addr/"
                                   f"--master-port?)") from None
            if rank in ranks:
                found[rank] = RemoteRank(conn, rank, rank // local_size)
        return found

    def close(self) -> None:
        self.listener.close()


def connect_to_leader(store: dist.Store, rank: int) -> Connection:
    """A remote worker's control connection to rank 0 (waits for rank 0 to publish it)."""
    host, port = store.get(CONTROL_KEY).decode().rsplit(":", 1)
    conn = Client((host, int(port)), authkey=bytes.fromhex(store.get(AUTH_KEY).decode()))
    conn.send(("hello", rank))
    return conn
