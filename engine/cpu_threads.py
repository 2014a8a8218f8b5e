"""How many CPU threads torch should use: the cores this process may really run on.

torch sizes its thread pool from the CPUs it can see. In a container with a CPU limit that is
the node's whole core count, while the cgroup quota lets the pod run on only a few: the extra
threads then time-slice against each other, and a 2-thread matmul on an oversubscribed core
was measured 10-20x slower than the same matmul on one thread. The quota is the truth.
"""
import logging
import math
import os
import time
from dataclasses import dataclass

import torch

CGROUP_ROOT = "/sys/fs/cgroup"
log = logging.getLogger(__name__)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: str | None = None) -> float | None:
    """The CPU quota in cores (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), or None."""
    root = root or CGROUP_ROOT
    v2 = _read(os.path.join(root, "cpu.max"))
    if v2:
        quota, _, period = v2.partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100000)
    quota = _read(os.path.join(root, "cpu", "cpu.cfs_quota_us"))
    period = _read(os.path.join(root, "cpu", "cpu.cfs_period_us"))
    if quota is None or period is None or int(quota) <= 0:
        return None
    return int(quota) / int(period)


def usable_cpus(root: str | None = None) -> int:
    """CPUs in this process's affinity mask, capped by the cgroup quota rounded up."""
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root)
    return cpus if limit is None else max(1, min(cpus, math.ceil(limit)))


def limit_torch_threads(share: int = 1) -> int:
    """Lower torch's intra-op threads to usable_cpus() // share (never raise them), unless
    the user chose with OMP_NUM_THREADS. Returns the thread count now in use."""
    if not os.environ.get("OMP_NUM_THREADS"):
        wanted = max(1, usable_cpus() // share)
        if wanted < torch.get_num_threads():
            torch.set_num_threads(wanted)
    return torch.get_num_threads()


def _run_delay_ns() -> int:
    """Nanoseconds this process's threads have spent runnable but waiting for a CPU."""
    total = 0
    for task in os.listdir("/proc/self/task"):
        stat = _read(f"/proc/self/task/{task}/schedstat")
        if stat:
            total += int(stat.split()[1])
    return total


def _idle_cpus_ticks(stat: str | None = None) -> tuple[int, int]:
    """(idle + iowait ticks, all ticks) over the CPUs this process may run on, from the
    per-CPU lines of /proc/stat (on a big shared host the rest of the machine is not ours)."""
    mine = {f"cpu{c}" for c in os.sched_getaffinity(0)}
    idle = total = 0
    for line in (stat if stat is not None else _read("/proc/stat") or "").splitlines():
        name, *fields = line.split()
        if name in mine:
            ticks = [int(x) for x in fields]
            idle, total = idle + sum(ticks[3:5]), total + sum(ticks)
    return idle, total


@dataclass(slots=True)
class ThreadSample:
    wall_s: float
    run_delay_ns: int
    idle_ticks: int
    all_ticks: int


def take_sample() -> ThreadSample:
    return ThreadSample(time.monotonic(), _run_delay_ns(), *_idle_cpus_ticks())


def decide_threads(before: ThreadSample, after: ThreadSample, threads: int, most: int,
                   cpus: int) -> int:
    """The thread count for the next interval. Waiting for a CPU a quarter of the time means
    another process holds one of our cores: a thread fewer stops the team's barriers from
    waiting on a descheduled member (what made 2-thread steps 3-10x slower on a busy host).
    A core's worth of idle time on our `cpus` while below `most` gives a thread back."""
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return threads
    waiting = (after.run_delay_ns - before.run_delay_ns) / 1e9 / (wall * threads)
    ticks = after.all_ticks - before.all_ticks
    idle_cpus = cpus * (after.idle_ticks - before.idle_ticks) / ticks if ticks else 0
    if threads > 1 and waiting > 0.25:
        return threads - 1
    if threads < most and idle_cpus > 0.9 and waiting < 0.05:
        return threads + 1
    return threads


# the A/B probe: busy windows at the chosen count between probes, the probe's windows
# (alternative, current, alternative, current: a drift in the load hits both arms alike), and
# how much faster the alternative must be to win (one-second windows differ by a few % alone)
WARMUP_WINDOWS = 4
HOLD_WINDOWS = 30
MARGIN = 0.05


@dataclass(slots=True)
class Window:
    """One interval's work: sequence rows stepped (about one output token each) in wall_s."""
    threads: int
    rows: int
    wall_s: float


def faster_count(windows: list[Window], current: int, margin: float = MARGIN) -> int:
    """The thread count that stepped more rows per second over `windows`; `current` unless
    another beat it by more than `margin`."""
    rates = {}
    for t in {w.threads for w in windows}:
        mine = [w for w in windows if w.threads == t]
        rates[t] = sum(w.rows for w in mine) / max(1e-9, sum(w.wall_s for w in mine))
    best = max(rates, key=rates.get)
    return best if rates[best] > rates.get(current, 0.0) * (1 + margin) else current


class ThreadGovernor:
    """Adapts torch's CPU threads to the cores this process really gets, in two ways.

    What a thread buys: now and then it runs a few windows with one thread fewer (or more)
    and keeps as its ceiling the count that stepped more rows per second. A server's core
    shares the cores with the HTTP frontend, whose work comes in bursts too short to show as
    waiting: on 2 cores one core thread served stories260K 47 % faster, while a ~20M model
    served 35 % faster with two. Between probes, every `interval_s`, the scheduler's own
    accounting (/proc schedstat and stat) reacts at once: waiting for a CPU drops a thread,
    an idle core gives one back up to the ceiling. Only windows in which the engine never
    ran out of work count for either, and a probe's windows for the probe alone. Off when
    the user chose OMP_NUM_THREADS, or where /proc has no schedstat."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.most = self.ceiling = torch.get_num_threads()
        self.interval_s = interval_s
        self.enabled = (self.most > 1 and not os.environ.get("OMP_NUM_THREADS")
                        and os.path.exists("/proc/self/schedstat"))
        self.last = take_sample() if self.enabled else None
        self.rows, self.busy = 0, True
        self.held = HOLD_WINDOWS - WARMUP_WINDOWS  # the first probe comes soon after start
        self.base, self.plan, self.windows = 0, [], []

    def pause(self) -> None:
        """The engine ran out of work: the window under way measures idleness, not speed."""
        self.busy = False

    def tick(self, rows: int) -> None:
        """Call once per step with its sequence rows; acts once an interval has passed."""
        if not self.enabled:
            return
        self.rows += rows
        if time.monotonic() - self.last.wall_s < self.interval_s:
            return
        now, threads = take_sample(), torch.get_num_threads()
        before, self.last = self.last, now
        window = Window(threads, self.rows, now.wall_s - before.wall_s)
        busy, self.rows, self.busy = self.busy, 0, True
        if not busy:  # it measured idleness: a probe goes on with the next busy window
            return
        if self.plan:  # the probe's own windows: contention shows in their rates
            return self._probe(threads, window)
        wanted = decide_threads(before, now, threads, self.ceiling, len(os.sched_getaffinity(0)))
        if wanted != threads:
            self._set(threads, wanted, "cores busy elsewhere" if wanted < threads
                      else "cores free again")
        else:
            self._probe(threads, window)

    def _probe(self, threads: int, window: Window) -> None:
        """Advance the A/B probe by one busy window."""
        if self.plan:
            self.windows.append(window)
            if len(self.windows) < len(self.plan):
                return self._set(threads, self.plan[len(self.windows)], "probe")
            self.ceiling = best = faster_count(self.windows, self.base)
            self.plan, self.windows, self.held = [], [], 0
            return self._set(threads, best, "measured faster")
        self.held += 1
        other = threads - 1 if threads > 1 else threads + 1
        if self.held >= HOLD_WINDOWS and other <= self.most:
            self.base, self.plan = threads, [other, threads, other, threads]
            self._set(threads, other, "probe")

    def _set(self, threads: int, wanted: int, why: str) -> None:
        if wanted == threads:
            return
        log.log(logging.DEBUG if why == "probe" else logging.INFO, "CPU threads %d -> %d (%s)",
                threads, wanted, why)
        torch.set_num_threads(wanted)
