"""Seeded faults for the emulated API server: what a misbehaving cluster does to a client.

Used by emulator.KubeEmulator and cluster.EmulatedCluster.inject. Only requests
from the listed User-Agents are disturbed, so a test's own client sees a healthy server. Each
request draws its fate from a generator seeded with (seed, method, path, how many times that
method and path came before): the n-th write to an object meets the same fault in every run,
however the operator's requests interleave.
"""

import random
from collections import Counter
from dataclasses import dataclass, field

# User-Agent prefixes of the operator's own requests: kopf's and our Kube's
OPERATOR_AGENTS = ("kopf/", "pagedserve-operator/")
WRITES = ("POST", "PATCH", "PUT", "DELETE")


@dataclass(slots=True)
class Fault:
    """What happens to one request."""

    delay: float = 0.0  # seconds before it is served
    status: int | None = None  # answered with this error; nothing is stored
    lost: bool = False  # stored, then answered 500: the client cannot tell that it happened
    lifetime: float | None = None  # a watch stream ends after this many seconds
    gone: bool = False  # ... with a 410 Gone event (the client must list again), else a plain close


@dataclass(slots=True)
class Faults:
    """Per-request probabilities of each fault (0..1), and how long watch streams last.

    conflict and lost apply to writes only; error to any request, watches included; broken
    paths model an API that keeps refusing some objects' writes. A watch
    stream lives watch_lifetime seconds on average (None: until the client leaves), as API
    servers end them on timeouts and restarts; half of the drops say 410 Gone first.
    """

    seed: int = 0
    conflict: float = 0.0  # 409 Conflict, as when another writer got there first
    error: float = 0.0  # 500 Internal Server Error
    lost: float = 0.0  # the write happened but the answer was a 500
    slow: float = 0.0  # served after a uniform 0..max_delay seconds
    max_delay: float = 0.5
    watch_lifetime: float | None = None
    broken: tuple[str, ...] = ()  # every write whose path holds one of these fails with 500
    agents: tuple[str, ...] = OPERATOR_AGENTS
    # fault -> times injected: "409", "500", "lost", "slow", "watch_closed", "watch_gone"
    injected: Counter = field(default_factory=Counter)
    _seen: Counter = field(default_factory=Counter, repr=False)

    def draw(self, method: str, path: str, agent: str, watch: bool = False) -> Fault:
        """The fate of one request (and a count of it in injected)."""
        if not agent.startswith(self.agents):
            return Fault()
        key = f"{method} {path}"
        self._seen[key] += 1
        rng = random.Random(f"{self.seed}|{key}|{self._seen[key]}")
        fault = Fault()
        if rng.random() < self.slow:
            fault.delay = rng.uniform(0.0, self.max_delay)
            self.injected["slow"] += 1
        write, roll = method in WRITES, rng.random()
        if write and any(part in path for part in self.broken):
            fault.status = 500
        elif write and roll < self.conflict:
            fault.status = 409
        elif roll < self.conflict * write + self.error:
            fault.status = 500
        elif write and roll < self.conflict + self.error + self.lost:
            fault.lost = True
            self.injected["lost"] += 1
        if fault.status:
            self.injected[str(fault.status)] += 1
        elif watch and self.watch_lifetime is not None:
            fault.lifetime = rng.uniform(0.5, 1.5) * self.watch_lifetime
            fault.gone = rng.random() < 0.5
        return fault
